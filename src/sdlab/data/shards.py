"""Webdataset tar shards: `<key>.png` + `<key>.json` per sample, written atomically."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from sdlab.data.images import DEFAULT_MAX_PIXELS, ImageRejected, decode
from sdlab.data.records import DataError


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def write_shard(path: Path, samples: list[dict]) -> None:
    """Write samples ({'key', 'png', 'json'}) to a tar at `path` via a temp name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    # a fixed member mtime: the same samples give the same bytes, so a rerun of download leaves
    # the tars' sha256, and so every encode fingerprint, unchanged (nothing is encoded again)
    with wds.TarWriter(str(temp), mtime=0.0) as sink:
        for sample in samples:
            sink.write({"__key__": sample["key"], "png": sample["png"], "json": sample["json"]})
    os.replace(temp, path)


def read_shard(path: str | Path) -> dict[str, dict]:
    """All samples of one shard: key -> {extension: bytes}."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def png_to_array(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W, 3) array of a PNG/JPEG sample; ImageRejected (too_large from the header,
    decode_error) for a bomb or bad bytes."""
    return np.asarray(decode(data, max_pixels).convert("RGB"))


def sample_image(sample: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W, 3) image of one shard sample ({extension: bytes})."""
    return png_to_array(sample.get("png") or sample.get("jpg") or b"", max_pixels)


def iter_images(shards_dir: str | Path, index_rows: list[dict], max_pixels: int = DEFAULT_MAX_PIXELS):
    """(position, image or ImageRejected) for index rows (`key`, `shard`), each shard read once."""
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(index_rows):
        by_shard.setdefault(row["shard"], []).append(i)
    for shard, positions in by_shard.items():
        samples = read_shard(Path(shards_dir) / shard)
        for i in positions:
            key = index_rows[i]["key"]
            if key not in samples:
                raise KeyError(f"{shard}: sample {key!r} listed in the index is missing")
            try:
                yield i, sample_image(samples[key], max_pixels)
            except ImageRejected as exc:
                yield i, exc


def load_image_list(
    shards_dir: str | Path, index_rows: list[dict], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[np.ndarray]:
    """uint8 (H, W, 3) images for index rows (`key`, `shard`), in row order, each at its stored
    size; an unreadable image raises DataError naming its shard and key."""
    out: list[np.ndarray | None] = [None] * len(index_rows)
    for i, image in iter_images(shards_dir, index_rows, max_pixels):
        if isinstance(image, ImageRejected):
            row = index_rows[i]
            raise DataError(f"{row['shard']}: sample {row['key']!r} is unreadable: {image}")
        out[i] = image
    return out


def center_square(image: np.ndarray, side: int) -> np.ndarray:
    """The middle `side` x `side` pixels of an (H, W, 3) image at least that large."""
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def load_images(
    shards_dir: str | Path,
    index_rows: list[dict],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    square_px: int | None = None,
) -> np.ndarray:
    """uint8 (N, H, W, 3) images for index rows, in row order. Images of several sizes (aspect
    buckets) need `square_px`: each is then its middle `square_px` square (a VAE's or a judge's
    view of real pixels, never padded)."""
    images = load_image_list(shards_dir, index_rows, max_pixels)
    if square_px is not None:
        images = [center_square(image, min(square_px, *image.shape[:2])) for image in images]
    if len({image.shape for image in images}) > 1:
        sizes = sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images})
        raise DataError(f"{shards_dir}: images of several sizes {sizes} (aspect buckets) cannot form one batch")
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
