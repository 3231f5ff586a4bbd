"""Assemble and save a standard diffusers `StableDiffusionPipeline` folder."""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

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


def save_pipeline(pipeline: StableDiffusionPipeline, out_dir: Path) -> None:
    with atomic_dir(out_dir) as temp:
        pipeline.save_pretrained(temp)


def export_pipeline(unet, cfg, vae: AutoencoderKL, tokenizer, text_encoder, out_dir: Path) -> None:
    """The trained pipeline folder. LoRA runs also keep their adapters as diffusers LoRA
    weights in `out_dir/lora` (for `pipeline.load_lora_weights`) and ship the base UNet
    with them merged, so `from_pretrained(out_dir)` is the fine-tuned model in every mode."""
    from sdlab.diffusion import make_noise_scheduler
    from sdlab.models.unet import make_unet

    scheduler = make_noise_scheduler(cfg)
    if cfg.trainable != "lora":
        save_pipeline(build_pipeline(unet, vae, tokenizer, text_encoder, scheduler), out_dir)
        return
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    base = make_unet(cfg, unet.config.sample_size, unet.config.in_channels, unet.config.cross_attention_dim)
    pipeline = build_pipeline(base, vae, tokenizer, text_encoder, scheduler)
    with atomic_dir(out_dir) as temp:
        StableDiffusionPipeline.save_lora_weights(temp / LORA_FOLDER, unet_lora_layers=lora)
        pipeline.load_lora_weights(str(temp / LORA_FOLDER))
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
        pipeline.save_pretrained(temp)


def load_pipeline(path: str | Path, device: str = "cpu") -> StableDiffusionPipeline:
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    pipeline = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)
