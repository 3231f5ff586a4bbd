"""The Transformer denoiser: diffusers' `PixArtTransformer2DModel` (PixArt-alpha, Chen et al.
2023, arXiv:2310.00426; a DiT, Peebles & Xie, arXiv:2212.09748, with cross-attention to the
text and adaLN-single timestep modulation), trained by the same loop as the UNet.

`PixArtDenoiser` only gives it the UNet's call signature, `model(noisy, t,
encoder_hidden_states=..., encoder_attention_mask=...)`, so the objective, the held-out loss
and the training loop take either. The exported folder holds a plain
`PixArtTransformer2DModel` in a `PixArtAlphaPipeline`.
"""

from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel

from sdlab.config import ConfigError, TransformerConfig


class PixArtDenoiser(PixArtTransformer2DModel):
    """A `PixArtTransformer2DModel` called like a `UNet2DConditionModel`."""

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **_,
    ):
        timestep = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        return super().forward(
            sample,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            encoder_attention_mask=encoder_attention_mask,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=return_dict,
        )


def build_transformer(cfg: TransformerConfig, sample_size: int, latent_channels: int, text_dim: int) -> PixArtDenoiser:
    if sample_size % cfg.patch_size:
        raise ConfigError(
            f"train.transformer.patch_size: {cfg.patch_size} does not divide the {sample_size}x{sample_size} latents"
        )
    return PixArtDenoiser(
        sample_size=sample_size,
        patch_size=cfg.patch_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        cross_attention_dim=cfg.num_attention_heads * cfg.attention_head_dim,
        caption_channels=text_dim,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
    )


def load_pretrained_transformer(
    name: str, subfolder: str | None, latent_channels: int, text_dim: int
) -> PixArtDenoiser:
    """A pretrained PixArt transformer that must fit the VAE's latents and the text encoder's width."""
    try:
        model = PixArtDenoiser.from_pretrained(name, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"train.pretrained: cannot load a PixArt transformer from {name!r} (subfolder {subfolder!r}): {exc}"
        ) from None
    if model.config.in_channels != latent_channels:
        raise ConfigError(
            f"train.pretrained: {name} takes {model.config.in_channels}-channel latents, "
            f"the VAE makes {latent_channels}"
        )
    if model.config.caption_channels != text_dim:
        raise ConfigError(
            f"train.pretrained: {name} reads {model.config.caption_channels}-d text states, "
            f"the text encoder gives {text_dim}-d"
        )
    return model


def plain_transformer(model: PixArtTransformer2DModel) -> PixArtTransformer2DModel:
    """The same weights as a plain `PixArtTransformer2DModel`, what `PixArtAlphaPipeline` loads."""
    plain = PixArtTransformer2DModel.from_config(model.config)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def as_denoiser(model: PixArtTransformer2DModel) -> PixArtDenoiser:
    """A loaded pipeline's transformer with the denoiser call signature (same weights)."""
    denoiser = PixArtDenoiser.from_config(model.config)
    denoiser.load_state_dict(model.state_dict())
    return denoiser.eval()
