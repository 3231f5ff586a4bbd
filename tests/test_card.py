"""The model card (sdlab.card): front matter and how-to follow the profile; the counts, settings
and metrics are the run's own. The whole stage, on a real run, is in test_pipeline_e2e."""

from __future__ import annotations

import ast
import re
import shlex

import yaml
from conftest import REPO, profile
from huggingface_hub import ModelCard

from sdlab.card import Facts, model_card
from sdlab.config import parse_params

STATS = {
    "scrape": {"records": 1200},
    "filter": {"input": 1200, "kept": 1100, "dropped_by_reason": {"caption_too_long": 70, "blocklisted": 30}},
    "download": {"input": 1100, "ok": 1000, "failed_by_reason": {"http_404": 60, "decode_error": 40}},
    "dedupe": {"input": 1000, "kept": 990, "duplicates": 10, "train": 940, "val": 50},
    "caption": {"captioned": 990, "fallbacks": 3},
    "encode": {"images": 990},
    "vae": {},
    "train": {
        "final_step": 300,
        "global_batch": 64,
        "train_samples": 940,
        "world_size": 8,
        "train_seconds": 5400,
        "final_loss": 0.1234,
        "denoiser_parameters": 859_520_964,
    },
}
METRICS = {
    "heldout_loss": 0.0912,
    "num_samples": 50,
    "vae_reconstruction_psnr_db": 27.25,
    "colour_histogram_distance": 0.31,
    "colour_histogram_distance_real_vs_real": 0.2,
    "clip_score": 24.5,
}
PROMPT = """a "quoted" cat's $HOME, `tick` and \\ backslash"""


def laion(**train) -> Facts:
    raw = profile("laion")
    raw["train"].update(train)
    files = {"model_index.json", "unet/diffusion_pytorch_model.safetensors"}
    if train.get("trainable") == "lora":
        files |= {"lora/pytorch_lora_weights.safetensors", "lora/lora_kohya.safetensors"}
    return Facts(parse_params(raw), STATS, METRICS, files, PROMPT)


def how_to(text: str) -> tuple[str, list[str]]:
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    return snippet, shlex.split(command)


def test_a_lora_fine_tune_names_its_base_model_datasets_and_adapter_files(tmp_path):
    facts = laion(init="pretrained", pretrained="org/base-sd", trainable="lora")
    model_card(facts).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")  # the front matter parses as Hugging Face reads it
    assert card.data.base_model == "org/base-sd" and card.data.datasets == ["laion/relaion2B-en-research-safe"]
    assert {"lora", "stable-diffusion"} <= set(card.data.tags) and "trained-from-scratch" not in card.data.tags
    assert "fine-tuned from `org/base-sd` (lora)" in card.text
    assert "lora/lora_kohya.safetensors" in card.text and "pytorch_lora_weights" in card.text
    assert "sdlab.safetensors" not in card.text  # the folder has no single file: the card does not offer one
    assert "come from the web" in card.text and "MiniLM" not in card.text


def test_the_card_offers_the_single_file_only_when_written_and_else_says_why():
    written = laion()
    written.files.add("sdlab.safetensors")
    assert "`sdlab.safetensors` holds the same weights as one SD 1.x checkpoint" in model_card(written).text
    refused = laion()
    why = "not written: the unet's attention_head_dim is 4; x"
    refused.stats = {**refused.stats, "train": {**refused.stats["train"], "single_file": why}}
    text = model_card(refused).text
    assert "sdlab.safetensors" not in text
    assert "No single-file checkpoint: the unet's attention_head_dim is 4; x; single-file tools" in text


def test_counts_reasons_and_metrics_are_the_runs_own():
    text = model_card(laion()).text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 1,200 | 1,100 | dropped: 70 caption_too_long, 30 blocklisted |" in rows["filter"]
    assert "| 1,100 | 1,000 | failed: 60 http_404, 40 decode_error; 256 px |" in rows["download"]
    assert "| 1,000 | 990 | 10 exact duplicates (MD5); split 940 train / 50 val |" in rows["dedupe"]
    assert "original; 3 fallback captions" in rows["caption"]
    assert "859.52M parameters; trained from scratch" in rows["denoiser"]
    assert "pretrained `stabilityai/sd-vae-ft-mse`" in rows["VAE"]
    assert "300 of global batch 64 (20.4 epochs of 940 images)" in rows["steps"]
    assert "90.0 min on 8 process(es)" in rows["run"]
    assert "| 0.0912 |" in rows["held-out denoising loss"] and "| 27.2 dB |" in rows["VAE reconstruction PSNR"]
    assert "| 24.500 |" in rows["CLIP score"] and "adherence" not in text  # no judge in this profile


def test_a_run_with_no_loss_on_record_still_gets_its_card():
    """Checkpoints saved before the run state carried its last loss: a run resumed at its end has none."""
    stats = {**STATS, "train": {**STATS["train"], "final_loss": None}}
    raw = profile("laion")
    text = model_card(Facts(parse_params(raw), stats, METRICS, {"model_index.json"}, PROMPT)).text
    assert "| final training loss | not recorded |" in text


def test_a_caption_mix_names_both_captions_the_model_saw():
    facts = laion(caption_mix=0.3)
    facts.params = facts.params.model_copy(
        update={"caption": facts.params.caption.model_copy(update={"backend": "qwen2.5-vl", "keep_original": True})}
    )
    facts.stats = {**facts.stats, "caption": {"captioned": 990, "fallbacks": 3, "original_captions": 970}}
    rows = {line.split("|")[1].strip(): line for line in model_card(facts).text.splitlines() if line.startswith("| ")}
    assert "the source's own caption kept beside for 970" in rows["caption"]
    assert "own caption in 30% of draws where an image has one, Qwen/Qwen2.5-VL-3B-Instruct's" in rows["captions seen"]
    assert "| captions seen |" not in model_card(laion()).text


def test_the_how_to_carries_the_prompt_and_evaluates_settings_exactly():
    text = model_card(laion()).text
    snippet, words = how_to(text)
    literal = re.search(r"^prompt = (.*)$", snippet, re.M).group(1)
    assert ast.literal_eval(literal) == PROMPT
    assert "num_inference_steps=30, guidance_scale=7.5" in snippet  # the laion profile's evaluate settings
    assert words[:2] == ["sdlab", "generate"]
    options = dict(zip(words[2::2], words[3::2], strict=True))
    assert options["--prompt"] == PROMPT and options["--steps"] == "30" and options["--guidance"] == "7.5"
    assert options["--scheduler"] == "dpm_solver_multistep" and options["--seed"] == "0"


def test_the_transformer_card_loads_pixart_with_the_encoders_length():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["denoiser"] = "transformer"
    raw["evaluate"]["scheduler"] = "euler"
    text = model_card(Facts(parse_params(raw), STATS, METRICS, set(), PROMPT)).text
    snippet, _ = how_to(text)
    assert "from diffusers import EulerDiscreteScheduler, PixArtAlphaPipeline" in snippet
    assert "use_resolution_binning=False, clean_caption=False, max_sequence_length=77" in snippet
    assert "MiniLM" in text and "synthetic" in text
