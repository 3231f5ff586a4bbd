"""Real-vs-generated distribution metrics that need nothing from a model hub: a colour
histogram distance, and KID in the VAE encoder's latent space, each beside its
real-vs-real baseline, so a number reads as "x times what two samples of real data differ by".

The evaluated val rows are split in two interleaved halves A and B: the baseline compares
real A with real B, the metric the images generated for A's prompts with real B. Both
sides then have the same size and the same mix of content, whatever order the val rows
come in (Noto's rows are grouped by emoji category: a baseline drawn from other rows read
*larger* than generated-vs-real)."""

from __future__ import annotations

import numpy as np
import torch

HISTOGRAM_BINS = 8  # per channel: 512 colour cells


def colour_histogram(images: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Normalised joint RGB histogram (bins**3,) of every pixel of uint8 (N, H, W, 3) images."""
    cells = (images.reshape(-1, 3).astype(np.int64) * bins) // 256
    flat = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
    counts = np.bincount(flat, minlength=bins**3).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = HISTOGRAM_BINS) -> float:
    """Total variation distance (0 = same colours, 1 = disjoint) between two image sets' histograms."""
    return float(0.5 * np.abs(colour_histogram(a, bins) - colour_histogram(b, bins)).sum())


class LatentFeatures(torch.nn.Module):
    """uint8 (N, 3, H, W) -> the VAE posterior mean, flattened and scaled to unit variance
    (the VAE's scaling factor; KID's polynomial kernel is scale-sensitive): the `feature=`
    module torchmetrics KID takes, for data with no classifier of its own (every source)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(images.float().div(127.5).sub(1.0)).latent_dist.mean
        return mean.flatten(1) * self.vae.config.scaling_factor


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) images through the VAE (decode of the posterior mean)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
        recon = vae.decode(vae.encode(x.float().div(127.5).sub(1.0)).latent_dist.mean).sample
        out.append(((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else images[:0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) between two uint8 image sets of the same shape, on the [0, 1] scale."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return 10 * float(np.log10(1.0 / max(mse, 1e-12)))


def to_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) array -> uint8 (N, 3, H, W) tensor, the layout torchmetrics takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def kid(extractor: torch.nn.Module, real: np.ndarray, other: np.ndarray) -> float:
    """KID (mean over subsets) between two uint8 (N, H, W, 3) sets in `extractor`'s space."""
    return fid_kid(extractor, real, other, with_fid=False)[1]


def fid_kid(
    extractor: torch.nn.Module, real: np.ndarray, generated: np.ndarray, *, with_fid: bool = True
) -> tuple[float, float]:
    """FID (nan without `with_fid`) and KID (mean over subsets) between two uint8 (N, H, W, 3)
    sets in `extractor`'s feature space: the one home of both."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = max(2, min(50, len(real), len(generated)))
    metrics = [KernelInceptionDistance(feature=extractor, subset_size=subset, normalize=False)]
    if with_fid:
        metrics.append(FrechetInceptionDistance(feature=extractor, normalize=False))
    for images, is_real in ((real, True), (generated, False)):
        batch = to_uint8_nchw(images)
        for metric in metrics:
            metric.update(batch, real=is_real)
    fid = float(metrics[1].compute()) if with_fid else float("nan")
    with torch.random.fork_rng():  # KID's subsets are drawn at random: the same sets give the same number
        torch.manual_seed(0)
        kid = float(metrics[0].compute()[0])
    return fid, kid


def distribution_metrics(vae, real: np.ndarray, generated: np.ndarray) -> dict:
    """`generated[i]` is the sample for the prompt of `real[i]`: generated A vs real B,
    beside real A vs real B (A, B: the even and odd rows)."""
    real_a, real_b, generated_a = real[0::2], real[1::2], generated[0::2]
    features = LatentFeatures(vae.eval())
    return {
        "colour_histogram_distance": histogram_distance(generated_a, real_b),
        "colour_histogram_distance_real_vs_real": histogram_distance(real_a, real_b),
        "kid_vae_latent": kid(features, real_b, generated_a),
        "kid_vae_latent_real_vs_real": kid(features, real_b, real_a),
    }
