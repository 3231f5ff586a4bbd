import numpy as np
import torch

from sdlab.config import VaeConfig
from sdlab.data.images import composite_on_white, fit_square
from sdlab.models.vae import (
    build_vae,
    encode_moments,
    latent_scaling_factor,
    load_pretrained_vae,
    reconstruction_psnr,
    to_tensor,
    train_vae,
)
from sdlab.sources.synthetic import draw_blob, sample_blob

TINY = VaeConfig(block_out_channels=[8, 16], latent_channels=4, steps=40, batch_size=16, lr=3e-3)


def blob_images(count: int, px: int = 16) -> torch.Tensor:
    arrays = [
        np.asarray(fit_square(composite_on_white(draw_blob(sample_blob(np.random.default_rng(i)), 64)), px))
        for i in range(count)
    ]
    return to_tensor(np.stack(arrays))


def test_training_lowers_the_loss_and_raises_psnr():
    torch.manual_seed(0)
    images = blob_images(48)
    vae = build_vae(TINY, 16)
    before = reconstruction_psnr(vae, images, 16)
    losses = train_vae(vae, images, TINY)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) * 0.7
    assert reconstruction_psnr(vae, images, 16) > before + 2


def test_scaling_factor_makes_latents_unit_variance():
    torch.manual_seed(0)
    images = blob_images(32)
    vae = build_vae(TINY, 16).eval()
    factor = latent_scaling_factor(vae, images, 16, seed=0)
    mean, std = encode_moments(vae, images, 16)
    scaled = (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))) * factor
    assert abs(scaled.std().item() - 1.0) < 0.05
    assert abs(factor - 0.18215) > 1e-3  # computed, not the SD constant


def test_pretrained_vae_loads_from_a_local_folder_with_its_scaling_factor(tmp_path):
    vae = build_vae(TINY, 16)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "repo" / "vae")
    loaded = load_pretrained_vae(str(tmp_path / "repo"), subfolder="vae")
    assert loaded.config.scaling_factor == 0.5
    x = blob_images(2)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x).latent_dist.mean, vae.eval().encode(x).latent_dist.mean, atol=1e-5)
