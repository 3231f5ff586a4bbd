"""Pixel-level judge of the synthetic blobs' skin color, for prompt-adherence metrics.

It reads the palette of `sdlab.sources.synthetic` and is itself scored on real images, so
a bad judge shows in the report. Shapes and strokes are read by
`sdlab.attribute_classifier`, which also learns the VAE's blur (a silhouette rule did not:
0.65 on VAE reconstructions of real images, the classifier 1.00).
"""

from __future__ import annotations

import numpy as np

from sdlab.sources.synthetic import SKIN_COLORS

_PALETTE_NAMES = list(SKIN_COLORS)
_PALETTE = np.array([SKIN_COLORS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)


def foreground_mask(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """(H, W) bool: pixels that differ from the white background."""
    return (255.0 - image.astype(np.float32)).sum(-1) > threshold


def dominant_skin_color(image: np.ndarray) -> str:
    """Name of the palette color most foreground pixels are closest to (ink excluded)."""
    pixels = image.reshape(-1, 3).astype(np.float32)[foreground_mask(image).reshape(-1)]
    pixels = pixels[pixels.max(-1) > 70]  # drop dark ink (eyes, mouth)
    if len(pixels) == 0:
        return "none"
    distances = ((pixels[:, None, :] - _PALETTE[None]) ** 2).sum(-1)  # (P, K)
    votes = np.bincount(distances.argmin(1), minlength=len(_PALETTE_NAMES))
    return _PALETTE_NAMES[int(votes.argmax())]


JUDGES = {"skin_color": dominant_skin_color}  # head_shape: read by the classifier, robust to VAE blur


def adherence(images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose judged value matches the row's."""
    scores = {}
    for attribute, judge in JUDGES.items():
        hits = [judge(image) == row[attribute] for image, row in zip(images, rows, strict=True)]
        scores[attribute] = float(np.mean(hits)) if hits else 0.0
    return scores
