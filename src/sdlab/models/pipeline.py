"""Assemble and save a standard diffusers `StableDiffusionPipeline` folder."""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from sdlab.io import atomic_dir

log = logging.getLogger(__name__)


def build_pipeline(unet, vae: AutoencoderKL, tokenizer, text_encoder, noise_scheduler: DDPMScheduler) -> StableDiffusionPipeline:
    """An SD-1.x-layout pipeline; sampling uses DPM-Solver++ (Lu et al., arXiv:2211.01095)."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(pipeline: StableDiffusionPipeline, out_dir: Path) -> None:
    with atomic_dir(out_dir) as temp:
        pipeline.save_pretrained(temp)


def load_pipeline(path: str | Path, device: str = "cpu") -> StableDiffusionPipeline:
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    pipeline = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)
