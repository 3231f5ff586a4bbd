"""What a pipeline folder can draw and how `sdlab generate` and the playground draw by default:
the sampling defaults (the evaluate stage's) and the image sizes the model admits. Light (no
torch), so `sdlab --help` stays fast; shared by the command line and the playground."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "dpm_solver_multistep", 20, 5.0
BUCKETS_FILE = "buckets.json"  # in a pipeline folder trained on aspect buckets: their sizes


def trained_buckets(model: Path) -> list[str]:
    """The aspect buckets ("<width>x<height>") a pipeline folder was trained at; [] for one size."""
    path = Path(model) / BUCKETS_FILE
    return json.loads(path.read_text())["buckets"] if path.is_file() else []


def size_rules(model: Path) -> tuple[int, int]:
    """(the multiple an image side must be, the side the model was trained at), from the pipeline
    folder's configs: the VAE halves each side per level but the last, and so does the UNet
    (PixArt's transformer cuts patches of `patch_size` latents instead)."""
    read = lambda part: json.loads((model / part / "config.json").read_text())  # noqa: E731
    vae_factor = 2 ** (len(read("vae")["block_out_channels"]) - 1)
    if (model / "transformer").is_dir():
        denoiser = read("transformer")
        own = denoiser["patch_size"]
    else:
        denoiser = read("unet")
        own = 2 ** (len(denoiser["block_out_channels"]) - 1)
    return vae_factor * own, denoiser["sample_size"] * vae_factor


def fits(value: int, multiple: int) -> bool:
    """Whether an image side of `value` pixels is one the model can draw (see `size_rules`)."""
    return value >= 1 and value % multiple == 0


def trained_sizes(size: int, buckets: list[str]) -> str:
    """In words: the size(s) a model was trained at (width x height for aspect buckets)."""
    return f"aspect buckets {', '.join(buckets)} (width x height)" if buckets else f"{size} px"
