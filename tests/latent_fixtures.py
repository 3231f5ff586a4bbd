"""Latents folders written in the encode stage's own format (`sdlab.latents`), without a VAE:
random fp16 latents and real token ids or states, for training tests and the memory benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sdlab.latents import SPLIT_CODES, latent_path, save_checked, text_path


def write_latents(
    root: Path,
    images: int,
    shard_size: int,
    shape=(4, 8, 8),
    text: str = "states",
    text_dim: int = 16,
    length: int = 5,
    val_every: int = 0,
    seed: int = 0,
    views: int = 1,
    store: str = "distribution",
    poison: bool = False,
    text_encoder: dict | None = None,
    text_mask: bool = False,
    buckets: dict[str, tuple[int, int, int]] | None = None,
) -> dict:
    """A latents folder of `images` rows in shards of `shard_size`; every `val_every`-th row is val.
    With `buckets` (name -> latent shape), rows go to the buckets in turn, stored per bucket."""
    generator = torch.Generator().manual_seed(seed)
    shards = []
    for number, start in enumerate(range(0, images, shard_size)):
        rows, stem = min(shard_size, images - start), f"{number:05d}"
        mean = torch.randn(rows, views, *shape, generator=generator)
        if poison:
            mean[:] = float("inf")
        latents = (
            {"mean": mean.half(), "std": torch.full_like(mean, 0.1).half()}
            if store == "distribution"
            else {"sample": mean.half()}
        )
        keys = [f"k{start + i:09d}" for i in range(rows)]
        split = torch.tensor(
            [int(val_every > 0 and (start + i) % val_every == val_every - 1) for i in range(rows)], dtype=torch.uint8
        )
        extra, counts = {}, {}
        if buckets:  # the encode stage's layout for a shard of several sizes
            names = list(buckets)
            latents, extra["buckets"] = {}, {}
            for b, name in enumerate(names):
                places = torch.arange(b, rows, len(names))
                if not len(places):
                    continue
                draw = torch.randn(len(places), views, *buckets[name], generator=generator)
                latents |= {f"mean.{name}": draw.half(), f"std.{name}": torch.full_like(draw, 0.1).half()}
                latents[f"rows.{name}"] = places
                extra["buckets"][name] = len(places)
                counts[name] = {s: int((split[places] == code).sum()) for s, code in SPLIT_CODES.items()}
        save_checked(latent_path(root, stem), latents, f"latents-{seed}-{stem}", keys=keys, **extra)
        conditioning = {"split": split}
        if text == "states":
            conditioning["hidden"] = torch.randn(rows, length, text_dim, generator=generator).half()
            if text_mask:  # states encoded with the mask (the transformer's), stored beside them
                conditioning["attention_mask"] = torch.ones(rows, length, dtype=torch.uint8)
        else:
            conditioning["input_ids"] = torch.randint(0, 1000, (rows, length), generator=generator, dtype=torch.int32)
            conditioning["attention_mask"] = torch.ones(rows, length, dtype=torch.uint8)
        save_checked(text_path(root, stem), conditioning, f"text-{seed}-{stem}")
        shards.append(
            {
                "name": stem,
                "rows": rows,
                "train": int((split == SPLIT_CODES["train"]).sum()),
                "val": int((split == SPLIT_CODES["val"]).sum()),
                "latents": f"latents-{seed}-{stem}",
                "text": f"text-{seed}-{stem}",
                **({"buckets": counts} if buckets else {}),
            }
        )
    uncond = {
        "input_ids": torch.zeros(1, length, dtype=torch.int32),
        "attention_mask": torch.ones(1, length, dtype=torch.uint8),
    }
    if text == "states":
        uncond["hidden"] = torch.zeros(1, length, text_dim).half()
    save_checked(root / "uncond.safetensors", uncond, "uncond", width=text_dim)
    meta = {
        "latent_shape": list(shape),
        "store": store,
        "views": views,
        "text": text,
        "text_dim": text_dim,
        "images": images,
        "shards": shards,
        "scaling_factor": 1.0,
        "dtype": "float16",
        "text_mask": text_mask,
        "text_encoder": text_encoder or {"pretrained": None, "max_length": length},
        **({"buckets": {name: list(shape) for name, shape in buckets.items()}} if buckets else {}),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    index = [
        {
            "key": f"k{i:09d}",
            "split": "val" if val_every and i % val_every == val_every - 1 else "train",
            "caption": f"caption {i}",
            "latent_shard": f"{i // shard_size:05d}.safetensors",
            "row": i % shard_size,
        }
        for i in range(images)
    ]
    pq.write_table(pa.Table.from_pylist(index), root / "index.parquet")
    return meta


class LossRecorder:
    """A dvclive stand-in for `train_denoiser(live=...)` that keeps the logged train/loss values."""

    step, dir = 0, None

    def __init__(self):
        self.losses: list[float] = []

    def log_metric(self, name, value):
        if name == "train/loss":
            self.losses.append(value)

    def make_summary(self):
        pass
