import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from sdlab.config import TrainConfig, UnetConfig, VaeConfig
from sdlab.data.images import composite_on_white, fit_square
from sdlab.diffusion import make_noise_scheduler
from sdlab.evaluate import generate, heldout_loss, timestep_grid
from sdlab.judge import adherence
from sdlab.models.pipeline import build_pipeline, load_pipeline, save_pipeline
from sdlab.models.text_encoder import load_text_encoder
from sdlab.models.unet import build_unet
from sdlab.models.vae import build_vae
from sdlab.reports import sample_grid
from sdlab.sources.synthetic import ATTRIBUTES, draw_blob, sample_blob


def real_blobs(count: int, px: int = 32):
    blobs = [sample_blob(np.random.default_rng([9, i])) for i in range(count)]
    images = np.stack([np.asarray(fit_square(composite_on_white(draw_blob(b, 128)), px)) for b in blobs])
    return images, [{a: getattr(b, a) for a in ATTRIBUTES} for b in blobs]


def test_adherence_is_perfect_on_real_images_and_near_chance_on_noise():
    images, rows = real_blobs(200)
    assert adherence(images, rows) == {"skin_color": 1.0}
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    assert adherence(noise, rows)["skin_color"] < 0.3


def test_adherence_catches_the_wrong_color():
    images, rows = real_blobs(50)
    shuffled = [dict(r, skin_color="green" if r["skin_color"] != "green" else "red") for r in rows]
    assert adherence(images, shuffled)["skin_color"] == 0.0


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer, text_encoder = load_text_encoder(None, 77)
    unet = build_unet(
        UnetConfig(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_levels=[False, True]), 8, 4, 384
    )
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 16)
    path = tmp_path_factory.mktemp("pipe") / "pipeline"
    save_pipeline(build_pipeline(unet, vae, tokenizer, text_encoder, make_noise_scheduler(TrainConfig())), path)
    return path


def test_same_seed_same_image_other_seed_other_image(tiny_pipeline_dir):
    pipeline = load_pipeline(tiny_pipeline_dir)
    first = generate(pipeline, ["blobhappy emoji"] * 2, [1, 2], steps=3, guidance=3.0, batch_size=2, progress=False)
    again = generate(pipeline, ["blobhappy emoji"], [1], steps=3, guidance=3.0, batch_size=1, progress=False)
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], first[1])


def test_scheduler_is_a_param_and_keeps_the_noise_schedule(tiny_pipeline_dir):
    from diffusers import DDIMScheduler

    from sdlab.sampling import use_scheduler

    pipeline = load_pipeline(tiny_pipeline_dir)
    betas = pipeline.scheduler.betas.clone()
    use_scheduler(pipeline, "ddim")
    assert isinstance(pipeline.scheduler, DDIMScheduler) and torch.equal(pipeline.scheduler.betas, betas)
    images = generate(pipeline, ["blobsad emoji"], [0], steps=3, guidance=2.0, batch_size=1, progress=False)
    assert images.shape == (1, 16, 16, 3)


def test_heldout_loss_is_deterministic(tiny_pipeline_dir):
    pipeline = load_pipeline(tiny_pipeline_dir)
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(6, 77, 384, generator=torch.Generator().manual_seed(1))
    grid = timestep_grid(1000, 4)
    assert grid == [125, 375, 625, 875]
    a = heldout_loss(pipeline.unet, make_noise_scheduler(TrainConfig()), latents, hidden=hidden, timesteps=grid, seed=0)
    b = heldout_loss(
        pipeline.unet, make_noise_scheduler(TrainConfig()), latents, hidden=hidden, timesteps=grid, seed=0, batch_size=4
    )
    assert a.keys() == b.keys() and all(abs(a[t] - b[t]) < 1e-6 for t in grid)


def test_generate_command_writes_a_reproducible_png(tiny_pipeline_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "sdlab.cli",
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        "blobsad emoji",
        "--seed",
        "0",
        "--steps",
        "3",
    ]
    result = subprocess.run(command + ["--out", str(tmp_path / "a.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    a = np.asarray(Image.open(tmp_path / "a.png"))
    assert a.shape == (16, 16, 3)
    result = subprocess.run(
        command + ["--num-images", "2", "--out", str(tmp_path / "many.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second = (np.asarray(Image.open(tmp_path / f"many-{i}.png")) for i in (0, 1))
    assert not np.array_equal(first, second)  # seeds 0 and 1
    size = ["--height", "16", "--width", "16"]
    result = subprocess.run(command + size + ["--out", str(tmp_path / "trained.png")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # another process, the trained size spelt out: the same pixels (reproducible; the default is the trained size)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "trained.png")), a)


def test_generate_draws_the_height_it_is_asked_for(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "tall.png"
    result = sdlab("generate", "--model", str(tiny_pipeline_dir), "--prompt", "blobsad emoji", "--steps", "2",
                   "--height", "24", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.asarray(Image.open(out)).shape == (24, 16, 3)  # the width stays the trained one


def sdlab(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdlab.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_generate_command_names_a_folder_that_is_not_a_pipeline(tmp_path):
    result = sdlab("generate", "--model", str(tmp_path), "--prompt", "x")
    assert result.returncode == 2 and str(tmp_path) in result.stderr and "Traceback" not in result.stderr
    missing = sdlab("generate", "--prompt", "x", cwd=tmp_path)  # the default models/pipeline, not there yet
    assert missing.returncode == 2 and "dvc repro" in missing.stderr and "dvc checkout" in missing.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--num-images", "0"], "--num-images must be at least 1, got 0"),
        (["--guidance", "-1"], "--guidance must be 0 or more"),
        (["--out", "picture.txt"], "--out picture.txt: name an image file"),
        (["--device", "cuda:7"], "--device cuda:7: no CUDA device is visible"),
        (["--height", "17"], "--height 17: must be a positive multiple of 4 (trained at 16 px)"),
        (["--width", "0"], "--width 0: must be a positive multiple of 4 (trained at 16 px)"),
    ],
)
def test_bad_generate_options_are_one_line_errors_and_write_nothing(tiny_pipeline_dir, tmp_path, args, message):
    result = sdlab("generate", "--model", str(tiny_pipeline_dir), "--prompt", "x", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_generate_help_describes_every_option_with_its_default():
    result = sdlab("generate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, default in [
        ("--model", "models/pipeline"),
        ("--scheduler", "dpm_solver_multistep"),
        ("--steps", "20"),
        ("--guidance", "5.0"),
        ("--seed", "0"),
        ("--num-images", "1"),
        ("--out", "out.png"),
        ("--height", "None"),
        ("--width", "None"),
    ]:
        assert option in text and f"(default: {default})" in text, option
    assert "--device" in text and "--negative-prompt" in text


def test_the_readme_snippet_and_the_command_line_draw_the_same_image(tiny_pipeline_dir, tmp_path):
    """README's Python snippet, run as written (on the tiny pipeline), against `sdlab generate`
    with its defaults: the same pixels for the same prompt and seed."""
    import re

    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "models/pipeline" in snippet and "out.png" in snippet
    snippet = snippet.replace("models/pipeline", str(tiny_pipeline_dir)).replace("out.png", str(tmp_path / "py.png"))
    exec(compile(snippet, "README.md", "exec"), {})
    prompt = re.search(r'--prompt "(.*?)"', readme, re.S).group(1).replace("\\\n", "")
    result = sdlab(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        prompt,
        "--seed",
        "0",
        "--out",
        str(tmp_path / "cli.png"),
    )
    assert result.returncode == 0, result.stderr
    from_python, from_cli = (np.asarray(Image.open(tmp_path / n)) for n in ("py.png", "cli.png"))
    assert from_python.shape == from_cli.shape == (16, 16, 3)
    assert np.array_equal(from_python, from_cli)
    other_seed = sdlab(
        "generate",
        "--model",
        str(tiny_pipeline_dir),
        "--prompt",
        prompt,
        "--seed",
        "1",
        "--out",
        str(tmp_path / "seed1.png"),
    )
    assert other_seed.returncode == 0 and not np.array_equal(np.asarray(Image.open(tmp_path / "seed1.png")), from_cli)


def test_sample_grid_has_one_cell_per_image():
    images, _ = real_blobs(6, px=16)
    grid = sample_grid(images, ["a prompt"] * 6, columns=3)
    assert grid.size[0] == 3 * 120 and grid.size[1] == 2 * (96 + 56)


def test_clip_score_matches_the_models_own_similarity_and_reads_each_prompt(tmp_path):
    from support.tiny_clip import tiny_clip_config
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sdlab.evaluate import clip_score

    tokenizer, _ = load_text_encoder(None, 77)
    config = tiny_clip_config(tokenizer)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path / "clip")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(tmp_path / "clip")
    images, rows = real_blobs(6)
    prompts = [f"a {r['skin_color']} {r['head_shape']} blob with {r['eyes']} eyes" for r in rows]
    assert len(set(prompts)) == len(prompts)

    def expected(texts):
        with torch.no_grad():
            out = model(**processor(text=texts, images=list(images), return_tensors="pt", padding=True))
        return out.text_embeds, max(0.0, (100 * (out.image_embeds * out.text_embeds).sum(-1)).mean().item())

    text_embeds, aligned = expected(prompts)
    assert torch.cdist(text_embeds, text_embeds).add(torch.eye(len(prompts))).min() > 1e-3  # one embedding each
    assert clip_score(str(tmp_path / "clip"), images, prompts) == pytest.approx(aligned, abs=1e-3)
    shuffled = prompts[1:] + prompts[:1]  # the same prompts, each beside another image
    _, misaligned = expected(shuffled)
    assert min(aligned, misaligned) > 0 and abs(misaligned - aligned) > 1e-2
    assert clip_score(str(tmp_path / "clip"), images, shuffled) == pytest.approx(misaligned, abs=1e-3)


def test_standard_inception_fid_loads_its_weights_from_a_local_file(tmp_path, monkeypatch):
    from torchmetrics.image.fid import NoTrainInceptionV3

    from sdlab.config import ConfigError
    from sdlab.distribution import fid_kid
    from sdlab.evaluate import inception_extractor

    # Fabricate a weights file of the right architecture (random values): build the module with
    # its weight loading switched off, save its state dict. The code under test then loads it.
    with monkeypatch.context() as patch:
        patch.setattr(NoTrainInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        import torch_fidelity.feature_extractor_inceptionv3 as fidelity

        patch.setattr(fidelity.torch, "load", lambda *a, **k: {})
        torch.save(
            NoTrainInceptionV3("inception-v3-compat", ["2048"], "unused").state_dict(), tmp_path / "inception.pth"
        )
    digest = hashlib.sha256((tmp_path / "inception.pth").read_bytes()).hexdigest()
    extractor = inception_extractor(str(tmp_path / "inception.pth"), digest)
    saved = torch.load(tmp_path / "inception.pth", weights_only=True)
    loaded = extractor.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)  # the file's weights
    images, _ = real_blobs(6)
    features = extractor(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert features.shape == (6, 2048)
    fid_self, _ = fid_kid(extractor, images, images)
    assert abs(fid_self) < 1e-2
    with pytest.raises(ConfigError, match="evaluate.inception_weights: file not found"):
        inception_extractor(str(tmp_path / "missing.pth"))


def test_inception_weights_are_checked_before_they_are_unpickled(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    from sdlab.config import ConfigError
    from sdlab.evaluate import inception_extractor

    unpickled = []
    monkeypatch.setattr(fidelity.torch, "load", lambda *a, **k: unpickled.append(a) or {})
    hostile = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # the right name, other bytes
    hostile.write_bytes(b"\x80\x04 not the published pickle")
    with pytest.raises(ConfigError, match=r"evaluate.inception_weights: .* has sha256 [0-9a-f]{64}, expected 6726825d"):
        inception_extractor(str(hostile))
    with pytest.raises(ConfigError, match="expected 0123abcd"):
        inception_extractor(str(hostile), "0123abcd")
    assert unpickled == []  # refused before torch.load
