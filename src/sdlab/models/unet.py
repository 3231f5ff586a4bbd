"""The denoising UNet, a diffusers `UNet2DConditionModel`: built from params or loaded
pretrained, and what of it is trained (all, the cross-attention layers, or LoRA adapters)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from sdlab.config import ConfigError, TrainConfig, UnetConfig
from sdlab.models.vae import norm_groups

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as diffusers' LoRA scripts


def build_unet(cfg: UnetConfig, sample_size: int, latent_channels: int, cross_attention_dim: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention_levels))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=norm_groups(cfg.block_out_channels),
    )


def load_pretrained_unet(name: str, subfolder: str | None, latent_channels: int,
                         cross_attention_dim: int) -> UNet2DConditionModel:
    """A pretrained UNet that must fit the VAE's latents and the text encoder's width."""
    try:
        unet = UNet2DConditionModel.from_pretrained(name, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"train.pretrained: cannot load a UNet from {name!r} (subfolder {subfolder!r}): {exc}") from None
    if unet.config.in_channels != latent_channels:
        raise ConfigError(f"train.pretrained: {name} takes {unet.config.in_channels}-channel latents, "
                          f"the VAE makes {latent_channels}")
    if unet.config.cross_attention_dim != cross_attention_dim:
        raise ConfigError(f"train.pretrained: {name} cross-attends to {unet.config.cross_attention_dim}-d text states, "
                          f"the text encoder gives {cross_attention_dim}-d")
    return unet


def make_unet(cfg: TrainConfig, sample_size: int, latent_channels: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """The UNet to train; a scratch one is initialised from `train.seed` alone (whatever the
    process did before), so two runs of the same params start from the same weights."""
    if cfg.init == "pretrained":
        return load_pretrained_unet(cfg.pretrained, cfg.pretrained_subfolder, latent_channels, cross_attention_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        unet = build_unet(cfg.unet, sample_size, latent_channels, cross_attention_dim)
    if cfg.zero_init_output:
        zero_init_output(unet)
    return unet


def zero_init_output(unet: UNet2DConditionModel) -> None:
    """Zero the last convolution, so training starts from a predictor that outputs 0 (the
    "zero module" of ADM, Dhariwal & Nichol 2021, arXiv:2105.05233, and ControlNet)."""
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


def select_trainable(unet: UNet2DConditionModel, mode: str, lora_rank: int) -> list[torch.nn.Parameter]:
    """Freeze what is not trained and return the parameters that are.

    all: every weight. cross_attention: the `attn2` layers only (text conditioning; how
    the source project fine-tuned SD 1.4 on emoji). lora: rank-`lora_rank` adapters on the
    attention projections via peft (Hu et al. 2021, arXiv:2106.09685); base weights frozen."""
    if mode == "all":
        unet.requires_grad_(True)
    elif mode == "cross_attention":
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(".attn2." in name)
    elif mode == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
    else:
        raise ValueError(f"unknown trainable mode {mode!r}")
    trainable = [p for p in unet.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"train.trainable: {mode} selects no parameter of this UNet")
    return trainable
