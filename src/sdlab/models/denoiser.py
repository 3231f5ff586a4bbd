"""The denoiser to train, by `train.denoiser`: a UNet (`sdlab.models.unet`) or a PixArt-style
Transformer (`sdlab.models.transformer`); built from params with seeded weights or loaded
pretrained, and what of it is trained (all, the cross-attention layers, or LoRA adapters)."""

from __future__ import annotations

import torch

from sdlab.config import ConfigError, TrainConfig
from sdlab.models.transformer import build_transformer, load_pretrained_transformer
from sdlab.models.unet import build_unet, load_pretrained_unet

DENOISERS = {  # train.denoiser -> (build from its params section, load pretrained)
    "unet": (build_unet, load_pretrained_unet),
    "transformer": (build_transformer, load_pretrained_transformer),
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as diffusers' LoRA scripts


def make_denoiser(cfg: TrainConfig, sample_size: int, latent_channels: int, text_dim: int) -> torch.nn.Module:
    """The model to train; a scratch one is initialised from `train.seed` alone (whatever the
    process did before), so two runs of the same params start from the same weights."""
    build, load = DENOISERS[cfg.denoiser]
    if cfg.init == "pretrained":
        return load(cfg.pretrained, cfg.pretrained_subfolder, latent_channels, text_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build(getattr(cfg, cfg.denoiser), sample_size, latent_channels, text_dim)
    if cfg.zero_init_output:
        zero_init_output(model)
    return model


def zero_init_output(model: torch.nn.Module) -> None:
    """Zero the output layer (the UNet's last convolution, the transformer's last linear), so
    training starts from a predictor that outputs 0 (the "zero module" of ADM, Dhariwal &
    Nichol 2021, arXiv:2105.05233, and ControlNet)."""
    last = model.conv_out if hasattr(model, "conv_out") else model.proj_out
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)


def select_trainable(model: torch.nn.Module, mode: str, lora_rank: int) -> list[torch.nn.Parameter]:
    """Freeze what is not trained and return the parameters that are.

    all: every weight. cross_attention: the `attn2` layers only (text conditioning; how
    the source project fine-tuned SD 1.4 on emoji). lora: rank-`lora_rank` adapters on the
    attention projections via peft (Hu et al. 2021, arXiv:2106.09685); base weights frozen."""
    if mode == "all":
        model.requires_grad_(True)
    elif mode == "cross_attention":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".attn2." in name)
    elif mode == "lora":
        from peft import LoraConfig

        model.requires_grad_(False)
        model.add_adapter(
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )
    else:
        raise ValueError(f"unknown trainable mode {mode!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"train.trainable: {mode} selects no parameter of this {type(model).__name__}")
    return trainable
