"""A latents folder in the encode stage's format from tensors in memory, for benchmarks that
time the real training step (`LatentStream` + `make_batch`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sdlab.latents import latent_path, save_checked, text_path  # noqa: E402
from sdlab.stream import LatentStream, rank_parts  # noqa: E402
from sdlab.train import Conditioning  # noqa: E402


def latents_stream(
    root: Path,
    latents: dict[str, torch.Tensor],
    hidden: torch.Tensor,
    uncond: torch.Tensor,
    batch_size: int,
    seed: int = 0,
) -> tuple[LatentStream, Conditioning]:
    """One shard of `latents` ((N, V, C, h, w) each) with per-image `hidden` states (N, L, D)."""
    rows = len(hidden)
    save_checked(latent_path(root, "00000"), {k: v.half() for k, v in latents.items()}, "bench", keys=[])
    save_checked(
        text_path(root, "00000"), {"split": torch.zeros(rows, dtype=torch.uint8), "hidden": hidden.half()}, "bench-text"
    )
    shards = [{"name": "00000", "rows": rows, "train": rows, "val": 0}]
    (root / "meta.json").write_text(json.dumps({"shards": shards}))
    return LatentStream(root, rank_parts(shards, 0, 1), batch_size, seed, 4), Conditioning(uncond.float()[None])
