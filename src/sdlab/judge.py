"""Pixel-level judges of synthetic blob attributes, for prompt-adherence metrics.

They read the drawing conventions of `sdlab.sources.synthetic` (palette, head shapes)
and are themselves scored on real images, so a bad judge shows in the report.
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


def head_shape(image: np.ndarray) -> str:
    """round / tall / wide / square from the silhouette's aspect ratio and fill ratio."""
    mask = foreground_mask(image)
    if mask.sum() < 4:
        return "none"
    rows, cols = np.where(mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    aspect, fill = width / height, mask.sum() / (width * height)
    if aspect < 0.86:
        return "tall"
    if aspect > 1.2:
        return "wide"
    return "square" if fill > 0.87 else "round"


JUDGES = {"skin_color": dominant_skin_color, "head_shape": head_shape}


def adherence(images: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """Per attribute, the fraction of images whose judged value matches the row's."""
    scores = {}
    for attribute, judge in JUDGES.items():
        hits = [judge(image) == row[attribute] for image, row in zip(images, rows)]
        scores[attribute] = float(np.mean(hits)) if hits else 0.0
    return scores
