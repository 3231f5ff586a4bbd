"""Assemble and save a standard diffusers `StableDiffusionPipeline` folder."""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from sdlab.config import TrainConfig
from sdlab.diffusion import make_noise_scheduler
from sdlab.io import atomic_dir

log = logging.getLogger(__name__)
LORA_FOLDER = "lora"


def build_pipeline(unet, vae: AutoencoderKL, tokenizer, text_encoder, noise_scheduler: DDPMScheduler) -> StableDiffusionPipeline:
    """An SD-1.x-layout pipeline; sampling uses DPM-Solver++ (Lu et al., arXiv:2211.01095)."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def export_pipeline(unet, cfg: TrainConfig, vae: AutoencoderKL, tokenizer, text_encoder, out_dir: Path) -> None:
    """The trained pipeline folder. LoRA runs also keep their adapters as diffusers LoRA
    weights in `out_dir/lora` (for `pipeline.load_lora_weights`) and ship the UNet with
    them merged, so `from_pretrained(out_dir)` is the fine-tuned model in every mode."""
    lora = None
    if cfg.trainable == "lora":
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        unet.fuse_lora()  # merge the adapters into the base weights, then drop them
        unet.unload_lora()
    save_pipeline(build_pipeline(unet, vae, tokenizer, text_encoder, make_noise_scheduler(cfg)), out_dir, lora)


def save_pipeline(pipeline: StableDiffusionPipeline, out_dir: Path, lora: dict | None = None) -> None:
    """The pipeline folder (and LoRA weights in `lora/`), written atomically."""
    with atomic_dir(out_dir) as temp:
        pipeline.save_pretrained(temp)
        if lora is not None:
            StableDiffusionPipeline.save_lora_weights(temp / LORA_FOLDER, unet_lora_layers=lora)


def load_pipeline(path: str | Path, device: str = "cpu") -> StableDiffusionPipeline:
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    pipeline = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)
