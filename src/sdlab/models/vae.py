"""The KL autoencoder: build a small one from config, train it, or load a pretrained one.

The latent scaling factor lives in the VAE's own config (`scaling_factor`), as diffusers
pipelines expect: read from a pretrained VAE, computed from the data for one trained here
(1 / std of the training latents, so the diffusion model sees unit-variance latents).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from sdlab.config import VaeConfig

log = logging.getLogger(__name__)


def norm_groups(channels: list[int]) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def build_vae(cfg: VaeConfig, image_px: int) -> AutoencoderKL:
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=norm_groups(cfg.block_out_channels),
        sample_size=image_px,
    )


def load_pretrained_vae(name_or_path: str, subfolder: str | None = None) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator) -> torch.Tensor:
    """Reconstruction MSE + kl_weight * KL per pixel (Kingma & Welling, arXiv:1312.6114)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=generator)
    recon = vae.decode(z).sample
    kl_per_pixel = posterior.kl().mean() / x[0].numel()
    return F.mse_loss(recon, x) + kl_weight * kl_per_pixel


def train_vae(vae: AutoencoderKL, images: torch.Tensor, cfg: VaeConfig) -> list[float]:
    """Train on `images` ((N, 3, H, W) in [-1, 1]) for `cfg.steps`; return the loss curve."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / max(1, cfg.steps)))
    )
    vae.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="vae", unit="step")
    for step in bar:
        batch = images[torch.randint(len(images), (cfg.batch_size,), generator=generator)]
        loss = vae_loss(vae, batch, cfg.kl_weight, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"vae: loss became {loss.item()} at step {step}; lower vae.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled) of each image."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(images[start : start + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int, seed: int) -> float:
    """1 / std of sampled latents, so scaled latents have unit variance."""
    mean, std = encode_moments(vae, images, batch_size)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return float(1.0 / z.std())


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor, batch_size: int) -> float:
    """PSNR (dB) of decode(mean latent) against the images, on the [0, 1] scale."""
    errors = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        errors.append(((recon - x) / 2).pow(2).flatten(1).mean(1))
    mse = torch.cat(errors).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))
