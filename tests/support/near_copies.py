"""Real emoji artwork with planted near-copies: resized, re-encoded JPEG, cropped, colour-jittered."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from sdlab.sources.emoji_sets import read_package

KINDS = ("resized", "jpeg", "cropped", "jittered")


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """One kind of near-copy of an RGB image, as the web makes them."""
    w, h = image.size
    if kind == "resized":
        return image.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BICUBIC)
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        return Image.open(buffer).convert("RGB")
    if kind == "cropped":
        return image.crop((2, 2, w - 2, h - 2))
    if kind == "jittered":
        return ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.1)).enhance(0.9)
    raise ValueError(kind)


def on_white(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    background = Image.new("RGBA", image.size, "white")
    background.alpha_composite(image)
    return background.convert("RGB")


def artwork_with_copies(tarball: Path, vendor: str, folder: Path, originals: int, copies_per_kind: int) -> list[dict]:
    """Records (key, path, title; `copy_of`, `kind` for the planted copies) of `originals` of the
    vendor's images no two of which are pixel-identical, and `copies_per_kind` near-copies of
    each kind, every copy after its original in key order and of a different original."""
    _, pngs = read_package(tarball, vendor)
    folder.mkdir(parents=True, exist_ok=True)
    records, seen = [], set()
    for name in sorted(pngs):
        image = on_white(pngs[name])
        pixels = np.asarray(image).tobytes()
        if pixels in seen:  # the packages draw some concepts with one picture: not a planted pair
            continue
        seen.add(pixels)
        key = f"art-{len(records):05d}"
        image.save(folder / f"{key}.png")
        records.append({"key": key, "path": str(folder / f"{key}.png"), "title": name, "copy_of": None, "kind": None})
        if len(records) == originals:
            break
    rng = np.random.default_rng(0)
    sources = rng.choice(originals, size=copies_per_kind * len(KINDS), replace=False)
    for i, source in enumerate(sources):
        kind = KINDS[i % len(KINDS)]
        original = records[source]
        key = f"copy-{i:05d}"
        copy = near_copy(Image.open(original["path"]).convert("RGB"), kind)
        copy.save(folder / f"{key}.{'jpg' if kind == 'jpeg' else 'png'}", **({"quality": 95} if kind == "jpeg" else {}))
        path = folder / f"{key}.{'jpg' if kind == 'jpeg' else 'png'}"
        records.append(
            {"key": key, "path": str(path), "title": original["title"], "copy_of": original["key"], "kind": kind}
        )
    return records
