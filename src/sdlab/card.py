"""The model card: `README.md` of the published pipeline folder, in Hugging Face's format
(YAML front matter, then what a person needs before using the model). A pure function of
what the stages recorded (`reports/<stage>/stats.json`, evaluate's metrics) and the params."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from huggingface_hub import ModelCard, ModelCardData

from sdlab.config import SCHEDULERS, Params
from sdlab.models.files import KOHYA_LORA, LORA_FOLDER, SINGLE_FILE

SAMPLES = "samples.png"  # evaluate's grid, shipped beside the card
DATA_STAGES = ("scrape", "filter", "download", "dedupe", "caption", "encode")
PIPELINE_CLASSES = {"unet": "StableDiffusionPipeline", "transformer": "PixArtAlphaPipeline"}


@dataclass
class Facts:
    """What the card is written from: each stage's stats, evaluate's metrics, the params."""

    params: Params
    stats: dict[str, dict] = field(default_factory=dict)  # stage name -> reports/<stage>/stats.json
    metrics: dict = field(default_factory=dict)  # reports/evaluate/metrics.json
    files: set[str] = field(default_factory=set)  # what the pipeline folder holds (paths inside it)
    example_prompt: str = "a prompt"  # a val caption, for the card's how-to


def denoiser_parameters(train_stats: dict) -> int:
    """The denoiser's size from reports/train/stats.json (`unet_parameters` in older files)."""
    return train_stats.get("denoiser_parameters", train_stats.get("unet_parameters", 0))


def _curated(stats: dict, cfg) -> str:
    """The near-duplicate and score drops of the dedupe stage, with the rule that made them."""
    parts = []
    if "near_duplicate_phash" in stats:
        parts.append(f"{stats['near_duplicate_phash']:,} near-duplicates (perceptual hash, <= {cfg.phash_bits} bits)")
    if "near_duplicate_embedding" in stats:
        parts.append(
            f"{stats['near_duplicate_embedding']:,} near-duplicates (CLIP cosine distance <= {cfg.embedding_distance})"
        )
    if "clip_score_below" in stats:
        parts.append(f"{stats['clip_score_below']:,} with CLIP score < {cfg.min_clip_score:g}")
    if "aesthetic_below" in stats:
        parts.append(f"{stats['aesthetic_below']:,} with aesthetic score < {cfg.min_aesthetic:g}")
    if "nsfw_above" in stats:
        parts.append(f"{stats['nsfw_above']:,} with NSFW probability > {cfg.max_nsfw:g}")
    if "watermark_above" in stats:
        parts.append(f"{stats['watermark_above']:,} with watermark probability > {cfg.max_watermark:g}")
    return "".join(f", {part}" for part in parts)


def _reasons(counts: dict | None) -> str:
    found = {k: v for k, v in (counts or {}).items() if v}
    return ", ".join(f"{v:,} {k}" for k, v in sorted(found.items(), key=lambda kv: -kv[1])) or "none"


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _source(params: Params) -> str:
    source = params.scrape.source
    detail = {
        "synthetic": "synthetic blob emoji drawn by sdlab, captions exact from their attributes",
        "discord": f"Discord emoji scraped from {params.scrape.discord.base_url} (tags: "
        f"{', '.join(params.scrape.discord.tags) or 'all'})",
        "laion": f"LAION metadata `{params.scrape.laion.metadata}`",
        "folder": f"the image folder `{params.scrape.folder.path}`",
        "noto": "the Noto Color Emoji font's glyphs",
        "emoji_sets": f"the {', '.join(params.scrape.emoji_sets.vendors)} emoji sets (npm "
        f"emoji-datasource-<vendor>@{params.scrape.emoji_sets.version}), captions from their names",
    }[source]
    return f"{source}: {detail}"


def _text_encoder(params: Params) -> str:
    return f"`{params.text_encoder.pretrained}`" if params.text_encoder.pretrained else "all-MiniLM-L6-v2 (packaged)"


def _vae(params: Params, stats: dict) -> str:
    if params.vae.pretrained:
        return f"pretrained `{params.vae.pretrained}`"
    trained = f"trained here: {params.vae.steps} steps"
    if "train_images" in stats:
        trained += f" on {stats['train_images']:,} images, val PSNR {stats['val_psnr_db']:.1f} dB"
    return trained


def data_rows(facts: Facts) -> list[tuple]:
    """(stage, in, out, what was dropped and why) for each data stage that recorded stats."""
    s, p = facts.stats, facts.params
    rows = []
    if "scrape" in s:
        rows.append(("scrape", "", f"{s['scrape']['records']:,} records", _source(p)))
    if "filter" in s:
        f = s["filter"]
        rows.append(("filter", f"{f['input']:,}", f"{f['kept']:,}", f"dropped: {_reasons(f['dropped_by_reason'])}"))
    if "download" in s:
        d = s["download"]
        failed = _reasons(d.get("failed_by_reason"))
        rows.append(("download", f"{d['input']:,}", f"{d['ok']:,}", f"failed: {failed}; {p.download.image_px} px"))
    if "dedupe" in s:
        d = s["dedupe"]
        rows.append(
            (
                "dedupe",
                f"{d['input']:,}",
                f"{d['kept']:,}",
                f"{d['duplicates']:,} exact duplicates (MD5){_curated(d, p.dedupe)}; "
                f"split {d['train']:,} train / {d['val']:,} val",
            )
        )
    if "caption" in s:
        c = s["caption"]
        backend = p.caption.backend + (f" (`{p.caption.model}`)" if p.caption.backend == "qwen2.5-vl" else "")
        note = f"{backend}; {c.get('fallbacks', 0):,} fallback captions"
        if "original_captions" in c:
            note += f"; the source's own caption kept beside for {c['original_captions']:,}"
        rows.append(("caption", "", f"{c['captioned']:,}", note))
    if "encode" in s:
        e = s["encode"]
        rows.append(("encode", "", f"{e['images']:,}", f"VAE latents + {_text_encoder(p)} text states"))
    return rows


def _caption_mix(p) -> list[tuple[str, str]]:
    """Which captions the model saw, when it saw two kinds (train.caption_mix)."""
    if not p.train.caption_mix:
        return []
    backend = p.caption.model if p.caption.backend == "qwen2.5-vl" else f"the {p.caption.backend} captioner"
    share = p.train.caption_mix
    return [
        (
            "captions seen",
            f"the source's own caption in {share:.0%} of draws where an image has one, {backend}'s "
            f"in the rest ({1 - share:.0%}; all draws for images without one)",
        )
    ]


def training_rows(facts: Facts) -> list[tuple[str, str]]:
    """The settings that shaped the model, and what the run recorded."""
    p, t = facts.params, facts.stats.get("train", {})
    cfg = p.train
    if cfg.init == "pretrained":
        init = f"fine-tuned from `{cfg.pretrained}` ({cfg.trainable})"
    else:
        init = "trained from scratch"
    size = denoiser_parameters(t)
    shape = ", ".join([f"{cfg.denoiser}", f"{size / 1e6:.2f}M parameters"] if size else [])
    objective = f"{cfg.prediction_type}, {cfg.beta_schedule} betas over {cfg.num_train_timesteps} steps"
    if cfg.prediction_type == "flow_matching":
        objective = "flow matching (rectified flow: straight paths, velocity target, logit-normal timesteps)"
    if cfg.snr_gamma:
        objective += f", min-SNR-γ {cfg.snr_gamma:g}"
    rows = [
        ("denoiser", f"{shape or cfg.denoiser}; {init}"),
        ("VAE", _vae(p, facts.stats.get("vae", {}))),
        ("text encoder", f"{_text_encoder(p)}, frozen, max {p.text_encoder.max_length} tokens"),
        ("resolution", f"{p.download.image_px} px"),
        ("objective", objective),
        (
            "optimiser",
            f"AdamW lr {cfg.lr:g} ({cfg.lr_schedule}, {cfg.warmup_steps} warmup steps), weight decay "
            f"{cfg.weight_decay:g}, grad clip {cfg.max_grad_norm:g}, EMA {cfg.ema_decay:g}",
        ),
        ("caption dropout", f"{cfg.caption_dropout:g} (for classifier-free guidance)"),
        *_caption_mix(p),
        ("precision", cfg.mixed_precision if cfg.mixed_precision != "no" else "fp32"),
    ]
    if t:
        epochs = t["final_step"] * t["global_batch"] / max(t["train_samples"], 1)
        rows += [
            (
                "steps",
                f"{t['final_step']:,} of global batch {t['global_batch']} ({epochs:.1f} epochs of "
                f"{t['train_samples']:,} images)",
            ),
            ("run", f"{t.get('train_seconds', 0) / 60:.1f} min on {t['world_size']} process(es), seed {cfg.seed}"),
            ("final training loss", "not recorded" if t.get("final_loss") is None else f"{t['final_loss']:.4f}"),
        ]
    return rows


def metric_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, value, what to compare it with) for evaluate's scalar metrics."""
    m = metrics
    rows = []
    if "heldout_loss" in m:
        rows.append(("held-out denoising loss", f"{m['heldout_loss']:.4f}", f"{m['num_samples']} val prompts"))
    if "vae_reconstruction_psnr_db" in m:
        rows.append(("VAE reconstruction PSNR", f"{m['vae_reconstruction_psnr_db']:.1f} dB", "real val images"))
    if "colour_histogram_distance" in m:
        rows.append(
            (
                "colour histogram distance",
                f"{m['colour_histogram_distance']:.3f}",
                f"real vs real: {m['colour_histogram_distance_real_vs_real']:.3f}",
            )
        )
    if "kid_vae_latent" in m:
        baseline = f"real vs real: {m['kid_vae_latent_real_vs_real']:.4f}"
        rows.append(("KID, VAE latent features", f"{m['kid_vae_latent']:.4f}", baseline))
    if "retrieval_at_5" in m:
        baseline = f"real val images: {m['retrieval_at_5_real']:.3f}, chance {m['retrieval_at_5_chance']:.3f}"
        rows.append(("retrieval@5 of the prompt's concept", f"{m['retrieval_at_5']:.3f}", baseline))
    optional = {"fid_inception": "FID (Inception)", "kid_inception": "KID (Inception)", "clip_score": "CLIP score"}
    for key, name in optional.items():
        if key in m:
            rows.append((name, f"{m[key]:.3f}", ""))
    return rows


def usage(facts: Facts) -> str:
    """How to load it: diffusers, the sdlab CLI, and the other formats the folder holds. The
    snippet and the command draw the same image (evaluate's sampler, steps and guidance)."""
    p = facts.params
    cls, scheduler = PIPELINE_CLASSES[p.train.denoiser], SCHEDULERS[p.evaluate.scheduler]
    steps, guidance = p.evaluate.num_inference_steps, p.evaluate.guidance_scale
    extra = ""
    if p.train.denoiser == "transformer":  # sdlab.models.pipeline.call_kwargs
        extra = f", use_resolution_binning=False, clean_caption=False, max_sequence_length={p.text_encoder.max_length}"
    lines = [
        "```python",
        "import torch",
        f"from diffusers import {scheduler}, {cls}",
        "",
        f'pipe = {cls}.from_pretrained("path/to/this/folder")',
        f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)  # keeps the trained noise schedule",
        f"prompt = {json.dumps(facts.example_prompt, ensure_ascii=False)}",
        f"image = pipe(prompt, num_inference_steps={steps}, guidance_scale={guidance:g},",
        f"             generator=torch.Generator().manual_seed(0){extra}).images[0]",
        'image.save("out.png")',
        "```",
        "",
        "or, with sdlab installed, the same image:",
        "",
        "```bash",
        f"sdlab generate --model path/to/this/folder --prompt {shlex.quote(facts.example_prompt)} \\",
        f"  --seed 0 --steps {steps} --guidance {guidance:g} --scheduler {p.evaluate.scheduler} --out out.png",
        "```",
    ]
    if buckets := facts.stats.get("train", {}).get("buckets"):
        width, height = buckets[-1].split("x")
        lines += [
            "",
            f"Trained on aspect buckets (width x height): {', '.join(buckets)}. Draw at one of them with "
            f"`height=`/`width=` in diffusers or `--height {height} --width {width}` in `sdlab generate`; "
            "other sizes are untrained.",
        ]
    if SINGLE_FILE in facts.files:
        lines += [
            "",
            f"`{SINGLE_FILE}` holds the same weights as one SD 1.x checkpoint (the original Stable "
            "Diffusion layout) for AUTOMATIC1111, ComfyUI or `StableDiffusionPipeline.from_single_file`: "
            "the model is SD 1.x-shaped throughout (UNet, CLIP-L text encoder, VAE at scale 0.18215, "
            "epsilon on the scaled-linear schedule), which is what those tools assume of such a file.",
        ]
    elif (said := facts.stats.get("train", {}).get("single_file", "")).startswith("not written: "):
        why = said.removeprefix("not written: ")
        lines += ["", f"No single-file checkpoint: {why}; single-file tools would misread it (use the folder)."]
    kohya = f"{LORA_FOLDER}/{KOHYA_LORA}"
    if kohya in facts.files:
        lines += [
            "",
            f"The UNet ships with its LoRA merged. The adapters alone, for `{p.train.pretrained}`: "
            f"`{LORA_FOLDER}/pytorch_lora_weights.safetensors` (diffusers, `pipe.load_lora_weights(...)`) and "
            f"`{kohya}` (kohya / AUTOMATIC1111 key layout).",
        ]
    return "\n".join(lines)


def limitations(facts: Facts) -> list[str]:
    p, t = facts.params, facts.stats.get("train", {})
    px = p.download.image_px
    items = [
        f"Trained at {px}×{px} px; other sizes (multiples of the latent grid) are outside what it saw.",
        f"Trained on {t.get('train_samples', 0):,} images: it draws what its data shows and little else.",
        "No safety checker is attached; outputs are not filtered.",
        f"Metrics come from {facts.metrics.get('num_samples', 0)} val prompts of the same data source, "
        "not from an external benchmark.",
    ]
    if p.scrape.source == "synthetic":
        items.append(
            "The data is synthetic: the vocabulary is the generator's attributes (head shape, eyes, mouth, "
            "expression, skin colour, action, background); other words are unknown to it."
        )
    if p.scrape.source in ("laion", "discord"):
        items.append("Images and captions come from the web: their licences, biases and errors carry into the model.")
    if licences := facts.stats.get("scrape", {}).get("licences"):
        items.append(
            "The training images keep their makers' licences, which bind what the model may be used for: "
            + "; ".join(licences.values())
            + "."
        )
    if p.text_encoder.pretrained is None:
        items.append("The packaged MiniLM text encoder is a sentence model, not a CLIP text tower.")
    return items


def card_data(facts: Facts) -> ModelCardData:
    p = facts.params
    tags = ["text-to-image", "diffusers", "sdlab", p.train.denoiser]
    tags.append("stable-diffusion" if p.train.denoiser == "unet" else "pixart-alpha")
    if p.train.trainable == "lora":
        tags.append("lora")
    if p.train.init == "scratch":
        tags.append("trained-from-scratch")  # no base_model
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=p.publish.license,
        tags=tags,
        base_model=p.train.pretrained if p.train.init == "pretrained" else None,
        datasets=p.publish.datasets or None,
    )


def model_card(facts: Facts) -> ModelCard:
    """The whole card, front matter included."""
    p, m = facts.params, facts.metrics
    t = facts.stats.get("train", {})
    origin = f"fine-tuned from `{p.train.pretrained}`" if p.train.init == "pretrained" else "trained from scratch"
    summary = (
        f"A text-to-image latent diffusion model ({PIPELINE_CLASSES[p.train.denoiser]}, {p.train.denoiser} "
        f"denoiser) {origin} by the sdlab pipeline on {t.get('train_samples', 0):,} images from the "
        f"{p.scrape.source} source at {p.download.image_px} px."
    )
    parts = [
        f"# sdlab {p.scrape.source} {p.train.denoiser}",
        summary,
        f"![samples for val prompts]({SAMPLES})",
        f"Samples for val prompts: {p.evaluate.scheduler}, {p.evaluate.num_inference_steps} steps, guidance "
        f"{p.evaluate.guidance_scale:g}, seeds from {p.evaluate.seed}.",
        "## How to use",
        usage(facts),
        "## Data",
        "Every count below is what the pipeline's stages recorded for this model.",
        _table(("stage", "in", "out", "notes"), data_rows(facts)),
        "## Training",
        _table(("", ""), training_rows(facts)),
        "## Evaluation",
        _table(("metric", "value", "compare with"), metric_rows(m)),
    ]
    if "adherence" in m:
        parts += [
            "Prompt adherence: the share of samples whose attribute a classifier trained on the real train "
            "images reads as the prompt's, beside that classifier's accuracy on real val images and chance.",
            _table(
                ("attribute", "adherence", "judge on real images", "chance"),
                [
                    (k, f"{v:.3f}", f"{m['judge_accuracy_on_real'][k]:.3f}", f"{m['chance'][k]:.3f}")
                    for k, v in m["adherence"].items()
                ],
            ),
        ]
    parts += ["## Limitations", "\n".join(f"- {item}" for item in limitations(facts))]
    body = "\n\n".join(parts) + "\n"
    return ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n{body}")
