"""The training objective, apart from the network: noise, timesteps, CFG dropout.

The denoiser knows nothing about noise; these functions take it as an argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from sdlab.config import TrainConfig

FLOW = "flow_prediction"  # diffusers' name for the flow-matching velocity target


def make_noise_scheduler(cfg: TrainConfig) -> DDPMScheduler | DPMSolverMultistepScheduler:
    """DDPM forward process (Ho et al., arXiv:2006.11239) with SD's betas, epsilon or v target;
    or, for flow matching, DPM-Solver++ on flow sigmas (the schedule Sana exports), whose config
    the sampler and the training loss both read."""
    if cfg.prediction_type == "flow_matching":
        return flow_scheduler(cfg.num_train_timesteps)
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )  # as Stable Diffusion's config


def flow_scheduler(num_train_timesteps: int) -> DPMSolverMultistepScheduler:
    """Rectified flow (Liu et al., arXiv:2209.03003; SD3, arXiv:2403.03206): x_t = (1 - s) x0 + s noise,
    s = t / num_train_timesteps, the denoiser predicts noise - x0. Shift 1: no resolution shift."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        prediction_type=FLOW,
        use_flow_sigmas=True,
        flow_shift=1.0,
    )


def is_flow(scheduler) -> bool:
    return scheduler.config.prediction_type == FLOW


def loss_schedule(config) -> DDPMScheduler | DPMSolverMultistepScheduler:
    """The training noise schedule behind a pipeline's sampler config (held-out loss)."""
    return (
        flow_scheduler(config["num_train_timesteps"])
        if config.get("prediction_type") == FLOW
        else (DDPMScheduler.from_config(config))
    )


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh draw from each cached VAE posterior (augmentation the cache keeps)."""
    return mean + std * torch.randn(mean.shape, generator=generator)


def drop_captions(
    hidden: torch.Tensor,
    empty: torch.Tensor,
    prob: float,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    empty_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Replace a `prob` fraction of captions by the empty prompt, for classifier-free
    guidance (Ho & Salimans, arXiv:2207.12598); with attention masks, theirs too."""
    drop = (torch.rand(hidden.shape[0], generator=generator) < prob).to(hidden.device)
    hidden = torch.where(drop[:, None, None], empty.expand_as(hidden), hidden)
    if mask is not None:
        mask = torch.where(drop[:, None], empty_mask.to(mask.device).expand_as(mask), mask)
    return hidden, mask


def offset_noise(shape: torch.Size, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus `offset` x a per-sample, per-channel constant, so the model can
    shift overall brightness (offset noise, https://www.crosslabs.org/blog/diffusion-with-offset-noise)."""
    noise = torch.randn(shape, generator=generator)  # (B, C, h, w)
    if offset:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    return noise


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the denoiser learns to predict: the noise, the velocity (Salimans & Ho,
    arXiv:2202.00512), or the flow's velocity noise - x0."""
    if is_flow(scheduler):
        return noise - latents
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def noised(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x_t: DDPM's sqrt(a) x0 + sqrt(1 - a) noise, or the flow's straight line (1 - s) x0 + s noise."""
    if is_flow(scheduler):
        s = (timesteps.float() / scheduler.config.num_train_timesteps).view(-1, *[1] * (latents.dim() - 1))
        return (1 - s) * latents + s * noise
    return scheduler.add_noise(latents, noise, timesteps)


def draw_timesteps(scheduler, count: int, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps: uniform integers for DDPM; for flow, s from a logit-normal (0, 1)
    (SD3's choice, arXiv:2403.03206 section 3.1) as a float t = s x num_train_timesteps."""
    steps = scheduler.config.num_train_timesteps
    if is_flow(scheduler):
        return torch.sigmoid(torch.randn(count, generator=generator)) * steps
    return torch.randint(0, steps, (count,), generator=generator)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR (or / (SNR + 1) for v targets), which
    stop easy low-noise steps from dominating (Hang et al., arXiv:2303.09556)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def denoising_loss(
    denoiser,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the denoiser's prediction and its target at the given timesteps, per sample
    (`mask`: the text attention mask, for denoisers that take one)."""
    noisy = noised(scheduler, latents, noise, timesteps)
    masked = {} if mask is None else {"encoder_attention_mask": mask}
    prediction = denoiser(noisy, timesteps, encoder_hidden_states=hidden, **masked).sample
    target = denoising_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)


def training_loss(
    denoiser,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    *,
    hidden: torch.Tensor,
    generator: torch.Generator,
    noise_offset: float = 0.0,
    snr_gamma: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean (optionally min-SNR weighted) loss at uniformly drawn timesteps with fresh noise."""
    noise = offset_noise(latents.shape, noise_offset, generator)
    timesteps = draw_timesteps(scheduler, latents.shape[0], generator)
    device = latents.device
    timesteps, noise = timesteps.to(device), noise.to(device)
    losses = denoising_loss(denoiser, scheduler, latents, hidden, timesteps, noise, mask)
    if snr_gamma is not None:
        losses = losses * min_snr_weights(scheduler, timesteps, snr_gamma)
    return losses.mean()
