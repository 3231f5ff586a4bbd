"""The training objective, apart from the network: noise, timesteps, CFG dropout.

The UNet knows nothing about noise; these functions take it as an argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from sdlab.config import TrainConfig


def make_noise_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    """DDPM forward process (Ho et al., arXiv:2006.11239), epsilon prediction."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                         clip_sample=False, steps_offset=1)  # as Stable Diffusion's config


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh draw from each cached VAE posterior (augmentation the cache keeps)."""
    return mean + std * torch.randn(mean.shape, generator=generator)


def drop_captions(hidden: torch.Tensor, empty: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a `prob` fraction of captions by the empty prompt, for classifier-free
    guidance (Ho & Salimans, arXiv:2207.12598)."""
    drop = torch.rand(hidden.shape[0], generator=generator) < prob
    return torch.where(drop[:, None, None], empty.expand_as(hidden), hidden)


def epsilon_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, hidden: torch.Tensor,
                 timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true noise at the given timesteps, per sample."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    return F.mse_loss(prediction.float(), noise.float(), reduction="none").flatten(1).mean(1)


def training_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, hidden: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Mean epsilon loss at uniformly drawn timesteps with fresh noise."""
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    device = latents.device
    return epsilon_loss(unet, scheduler, latents, hidden, timesteps.to(device), noise.to(device)).mean()
