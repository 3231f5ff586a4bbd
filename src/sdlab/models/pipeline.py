"""Assemble, save and load a standard diffusers pipeline folder: `StableDiffusionPipeline`
for the UNet, `PixArtAlphaPipeline` for the Transformer denoiser."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionPipeline,
)

from sdlab.config import TrainConfig
from sdlab.diffusion import make_noise_scheduler
from sdlab.drawing_rules import BUCKETS_FILE
from sdlab.io import atomic_dir
from sdlab.models.files import KOHYA_LORA, LORA_FOLDER, SINGLE_FILE
from sdlab.models.single_file import SingleFileUnsupported, pipeline_to_ldm
from sdlab.models.transformer import as_denoiser, plain_transformer

log = logging.getLogger(__name__)


def build_pipeline(model, vae: AutoencoderKL, tokenizer, text_encoder, noise_scheduler: DDPMScheduler):
    """The pipeline of a trained denoiser; sampling uses DPM-Solver++ (Lu et al., arXiv:2211.01095)."""
    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler.config)
    if isinstance(model, PixArtTransformer2DModel):
        return PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=plain_transformer(model),
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=model,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export_pipeline(
    model, cfg: TrainConfig, vae: AutoencoderKL, tokenizer, text_encoder, out_dir: Path, buckets: list[str] = ()
) -> str:
    """The trained pipeline folder, with `SINGLE_FILE` when the components have a Stable Diffusion
    layout (returns what happened to it, in words). LoRA runs (UNet) also keep their adapters in `out_dir/lora`,
    as diffusers LoRA weights (for `pipeline.load_lora_weights`) and in kohya's key layout
    (`KOHYA_LORA`, the file AUTOMATIC1111 and ComfyUI load), and ship the UNet with them merged,
    so `from_pretrained(out_dir)` is the fine-tuned model in every mode."""
    lora = kohya = None
    if cfg.trainable == "lora":
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict

        adapters = get_peft_model_state_dict(model)
        lora = convert_state_dict_to_diffusers(adapters)
        kohya = convert_state_dict_to_kohya({f"unet.{name}": tensor for name, tensor in adapters.items()})
        model.fuse_lora()  # merge the adapters into the base weights, then drop them
        model.unload_lora()
    pipeline = build_pipeline(model, vae, tokenizer, text_encoder, make_noise_scheduler(cfg))
    return save_pipeline(pipeline, out_dir, lora, kohya, single_file=True, buckets=buckets)


def save_pipeline(
    pipeline: DiffusionPipeline,
    out_dir: Path,
    lora: dict | None = None,
    kohya: dict | None = None,
    single_file: bool = False,
    buckets: list[str] = (),
) -> str:
    """The pipeline folder (and LoRA weights in `lora/`), written atomically. With `single_file`,
    also `SINGLE_FILE`, the Stable Diffusion checkpoint layout, when the components have one.
    Returns what happened to the single file, in words."""
    with atomic_dir(out_dir) as temp:
        pipeline.save_pretrained(temp)
        if buckets:  # the sizes it was trained at, for `sdlab generate`, the playground and the card
            (temp / BUCKETS_FILE).write_text(json.dumps({"buckets": list(buckets)}, indent=2))
        single = "not asked"
        if single_file:
            try:
                ldm = pipeline_to_ldm(pipeline)
            except SingleFileUnsupported as exc:
                single = f"not written: {exc}"
            else:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in ldm.items()}, str(temp / SINGLE_FILE))
                single = f"written: {SINGLE_FILE} ({len(ldm)} tensors, Stable Diffusion layout)"
        if lora is not None:
            StableDiffusionPipeline.save_lora_weights(temp / LORA_FOLDER, unet_lora_layers=lora)
        if kohya is not None:
            from safetensors.torch import save_file

            tensors = {name: tensor.detach().contiguous() for name, tensor in kohya.items()}
            save_file(tensors, str(temp / LORA_FOLDER / KOHYA_LORA), metadata={"ss_network_module": "networks.lora"})
    return single


def load_pipeline(path: str | Path, device: str = "cpu") -> DiffusionPipeline:
    """A saved pipeline folder, of whichever class its model_index.json names."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    kind = json.loads((path / "model_index.json").read_text()).get("_class_name")
    extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "StableDiffusionPipeline" else {}
    pipeline = DiffusionPipeline.from_pretrained(str(path), **extra)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def denoiser_of(pipeline: DiffusionPipeline):
    """The pipeline's denoiser with the UNet call signature (sdlab.diffusion.denoising_loss)."""
    return as_denoiser(pipeline.transformer) if hasattr(pipeline, "transformer") else pipeline.unet


def uses_text_mask(pipeline: DiffusionPipeline) -> bool:
    """PixArt encodes prompts with the attention mask and gives the mask to the denoiser."""
    return isinstance(pipeline, PixArtAlphaPipeline)


def call_kwargs(pipeline: DiffusionPipeline) -> dict:
    """What `pipeline(...)` needs beyond the prompt to sample as it was trained: PixArt's
    aspect-ratio binning only knows its 256-1024 px latent sizes, and prompts are padded to
    the text encoder's trained length."""
    if isinstance(pipeline, PixArtAlphaPipeline):
        return {
            "use_resolution_binning": False,
            "clean_caption": False,
            "max_sequence_length": pipeline.tokenizer.model_max_length,
        }
    return {}
