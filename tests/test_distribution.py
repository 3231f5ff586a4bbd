"""Distribution metrics beside their real-vs-real baselines (no hub network needed)."""

import numpy as np

from sdlab.config import VaeConfig
from sdlab.distribution import colour_histogram, distribution_metrics, histogram_distance, psnr, reconstruct
from sdlab.models.vae import build_vae


def images(color, count=6, px=8):
    out = np.full((count, px, px, 3), 255, np.uint8)
    out[:, 2:6, 2:6] = color
    return out


def test_histogram_distance_is_zero_for_the_same_colours_and_one_for_disjoint_ones():
    red, blue = images((220, 20, 20)), images((20, 20, 220))
    assert abs(colour_histogram(red).sum() - 1) < 1e-9
    assert histogram_distance(red, red[::-1]) == 0.0
    assert histogram_distance(red, blue) == 0.25  # the white background (3/4 of pixels) is shared
    assert histogram_distance(np.zeros_like(red), np.full_like(red, 255)) == 1.0


def test_generated_sets_far_from_real_score_worse_than_the_real_baseline():
    rng = np.random.default_rng(0)
    real = np.stack([images((int(c), 40, 200 - int(c)), 1)[0] for c in rng.integers(0, 200, 80)])
    collapsed = images((0, 200, 0), 80)  # every sample one colour the data never has
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 8)
    metrics = distribution_metrics(vae, real, collapsed)
    assert metrics["colour_histogram_distance"] > 2 * metrics["colour_histogram_distance_real_vs_real"]
    assert metrics["kid_vae_latent"] > metrics["kid_vae_latent_real_vs_real"]
    perfect = distribution_metrics(vae, real, real)  # samples that are the real images of their prompts
    assert perfect["colour_histogram_distance"] == perfect["colour_histogram_distance_real_vs_real"]


def test_the_baseline_follows_the_mix_of_the_rows_not_their_order():
    """Rows grouped by content (as Noto's are): the halves interleave, so both sides see every group."""
    grouped = np.concatenate([images((220, 20, 20), 20), images((20, 20, 220), 20)])
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 8)
    assert distribution_metrics(vae, grouped, grouped)["colour_histogram_distance_real_vs_real"] == 0.0
    assert distribution_metrics(vae, grouped, grouped[::-1])["colour_histogram_distance"] == 0.0


def test_reconstruction_keeps_shape_and_psnr_ranks_it():
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 8).eval()
    real = images((200, 30, 30))
    recon = reconstruct(vae, real, batch_size=4)
    assert recon.shape == real.shape and recon.dtype == np.uint8
    assert psnr(real, real) > 100 and psnr(real, recon) < psnr(
        real, np.clip(real.astype(int) + 3, 0, 255).astype(np.uint8)
    )
