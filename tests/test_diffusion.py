"""The training objective, tested with a stand-in network that predicts exactly what it is given."""

import pytest
import torch

from sdlab.config import TrainConfig
from sdlab.diffusion import (
    denoising_loss,
    denoising_target,
    make_noise_scheduler,
    min_snr_weights,
    offset_noise,
    training_loss,
)


class Oracle(torch.nn.Module):
    """Returns a fixed tensor as its prediction, like a UNet that is exactly right."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def forward(self, noisy, timesteps, encoder_hidden_states):
        return type("Out", (), {"sample": self.answer})()


def batch():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(6, 4, 8, 8, generator=g),
        torch.randn(6, 4, 8, 8, generator=g),
        torch.tensor([0, 100, 300, 500, 700, 999]),
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_perfect_prediction_has_zero_loss_and_the_other_target_does_not(prediction_type):
    scheduler = make_noise_scheduler(TrainConfig(prediction_type=prediction_type))
    latents, noise, t = batch()
    target = denoising_target(scheduler, latents, noise, t)
    assert torch.equal(target, noise) == (prediction_type == "epsilon")
    assert denoising_loss(Oracle(target), scheduler, latents, None, t, noise).abs().max() < 1e-10
    other = scheduler.get_velocity(latents, noise, t) if prediction_type == "epsilon" else noise
    assert denoising_loss(Oracle(other), scheduler, latents, None, t, noise).mean() > 0.1


def test_v_target_is_alpha_noise_minus_sigma_latents():
    scheduler = make_noise_scheduler(TrainConfig(prediction_type="v_prediction"))
    latents, noise, t = batch()
    a = scheduler.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - scheduler.alphas_cumprod[t]).sqrt()[:, None, None, None]
    assert torch.allclose(denoising_target(scheduler, latents, noise, t), a * noise - s * latents, atol=1e-6)


def test_min_snr_weights_cap_the_easy_timesteps_only():
    scheduler = make_noise_scheduler(TrainConfig())
    t = torch.tensor([0, 50, 500, 999])
    weights = min_snr_weights(scheduler, t, gamma=5.0)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    assert torch.allclose(weights[snr > 5], 5.0 / snr[snr > 5]) and (weights[snr > 5] < 1).all()
    assert torch.allclose(weights[snr <= 5], torch.ones_like(weights[snr <= 5]))


def test_offset_noise_adds_a_per_channel_constant():
    g = torch.Generator().manual_seed(0)
    plain = offset_noise(torch.Size([512, 4, 8, 8]), 0.0, g)
    shifted = offset_noise(torch.Size([512, 4, 8, 8]), 0.5, torch.Generator().manual_seed(0))
    channel_means = (shifted - plain).mean(dim=(2, 3))  # (B, C): the constant per sample and channel
    assert torch.allclose((shifted - plain), channel_means[:, :, None, None].expand_as(plain), atol=1e-6)
    assert 0.45 < channel_means.std() < 0.55


def test_training_loss_applies_the_weights():
    scheduler = make_noise_scheduler(TrainConfig())
    latents, _, _ = batch()
    zero = Oracle(torch.zeros_like(latents))
    plain = training_loss(zero, scheduler, latents, hidden=None, generator=torch.Generator().manual_seed(3))
    weighted = training_loss(
        zero, scheduler, latents, hidden=None, generator=torch.Generator().manual_seed(3), snr_gamma=1e-3
    )
    assert weighted < plain  # same draws, every weight below 1


def test_the_exported_sampler_keeps_the_training_target(tmp_path):
    from sdlab.config import UnetConfig, VaeConfig
    from sdlab.models.pipeline import build_pipeline
    from sdlab.models.text_encoder import load_text_encoder
    from sdlab.models.unet import build_unet
    from sdlab.models.vae import build_vae

    tokenizer, text_encoder = load_text_encoder(None, 77)
    unet = build_unet(
        UnetConfig(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_levels=[False, True]), 4, 4, 384
    )
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 8)
    v_model = make_noise_scheduler(TrainConfig(prediction_type="v_prediction"))
    pipeline = build_pipeline(unet, vae, tokenizer, text_encoder, v_model)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"

    from sdlab.models.single_file import SingleFileUnsupported, check_convertible
    from sdlab.sampling import use_scheduler

    flow = make_noise_scheduler(TrainConfig(prediction_type="flow_matching", snr_gamma=None))
    pipeline = build_pipeline(unet, vae, tokenizer, text_encoder, flow)
    assert pipeline.scheduler.config.prediction_type == "flow_prediction" and pipeline.scheduler.config.use_flow_sigmas
    use_scheduler(pipeline, "unipc")
    assert pipeline.scheduler.config.use_flow_sigmas  # the swapped sampler keeps the flow sigmas
    with pytest.raises(ValueError, match="scheduler: euler cannot sample this flow-matching model"):
        use_scheduler(pipeline, "euler")
    with pytest.raises(SingleFileUnsupported, match="flow matching"):
        check_convertible(pipeline)


def test_flow_matching_noises_on_a_straight_line_and_targets_noise_minus_data():
    scheduler = make_noise_scheduler(TrainConfig(prediction_type="flow_matching", snr_gamma=None))
    latents, noise, t = batch()
    s = (t / 1000.0)[:, None, None, None]
    target = denoising_target(scheduler, latents, noise, t)
    assert torch.allclose(target, noise - latents)
    assert denoising_loss(Oracle(target), scheduler, latents, None, t, noise).abs().max() < 1e-10
    assert denoising_loss(Oracle(noise), scheduler, latents, None, t, noise).mean() > 0.5
    from sdlab.diffusion import noised

    assert torch.allclose(noised(scheduler, latents, noise, t), (1 - s) * latents + s * noise)
    drawn = training_loss(
        Oracle(torch.zeros_like(latents)), scheduler, latents, hidden=None, generator=torch.Generator().manual_seed(5)
    )
    assert 1.5 < drawn < 2.5  # E|noise - x0|^2 = 2 for unit Gaussians


@pytest.mark.parametrize("sampler", ["dpm_solver_multistep", "unipc"])
def test_the_exported_flow_sampler_walks_the_trained_path_back_to_the_data(sampler):
    """A denoiser that answers the exact velocity for one data point: the exported sampler,
    started from noise, must land on that point (the sampler's sigmas are the training's t/1000)."""
    import diffusers

    from sdlab.config import SCHEDULERS

    trained = make_noise_scheduler(TrainConfig(prediction_type="flow_matching", snr_gamma=None))
    scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(trained.config)
    data = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * scheduler.init_noise_sigma
    scheduler.set_timesteps(12)
    for t in scheduler.timesteps:
        s = float(t) / 1000.0
        velocity = (x - data) / s  # noise - data, read off the straight line through x
        x = scheduler.step(velocity, t, x).prev_sample
    assert torch.allclose(x, data, atol=5e-3)  # the last sigma is 1/1000, not 0


def test_flow_matching_refuses_the_ddpm_only_settings():
    from sdlab.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="train.snr_gamma: min-SNR weights the DDPM objectives"):
        parse_params({"train": {"prediction_type": "flow_matching"}, "evaluate": {"judge": None}})
    with pytest.raises(ConfigError, match="evaluate.scheduler: ddim cannot sample a flow_matching model"):
        parse_params(
            {"train": {"prediction_type": "flow_matching", "snr_gamma": None}, "evaluate": {"scheduler": "ddim"}}
        )
