"""The denoising UNet, a diffusers `UNet2DConditionModel`, built from params or loaded pretrained."""

from __future__ import annotations

from diffusers import UNet2DConditionModel

from sdlab.config import ConfigError, UnetConfig
from sdlab.models.vae import norm_groups


def build_unet(
    cfg: UnetConfig, sample_size: int, latent_channels: int, cross_attention_dim: int
) -> UNet2DConditionModel:
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


def load_pretrained_unet(
    name: str, subfolder: str | None, latent_channels: int, cross_attention_dim: int
) -> UNet2DConditionModel:
    """A pretrained UNet that must fit the VAE's latents and the text encoder's width."""
    try:
        unet = UNet2DConditionModel.from_pretrained(name, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"train.pretrained: cannot load a UNet from {name!r} (subfolder {subfolder!r}): {exc}"
        ) from None
    if unet.config.in_channels != latent_channels:
        raise ConfigError(
            f"train.pretrained: {name} takes {unet.config.in_channels}-channel latents, the VAE makes {latent_channels}"
        )
    if unet.config.cross_attention_dim != cross_attention_dim:
        raise ConfigError(
            f"train.pretrained: {name} cross-attends to {unet.config.cross_attention_dim}-d text states, "
            f"the text encoder gives {cross_attention_dim}-d"
        )
    return unet
