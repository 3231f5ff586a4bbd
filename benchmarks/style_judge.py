"""The style judge alone, on a kept emoji-sets run: its accuracy on the real val images of the
held-out (concept, style) pairs, on their VAE reconstructions, and on the samples evaluate draws
for them (same rows, same seeds), for judge variants given as KIND:STEPS:SEED[:MAP].

    .venv/bin/python benchmarks/style_judge.py RUN_DIR pool:600:0 nopool:600:0 pool:600:1 pool:1500:0
    .venv/bin/python benchmarks/style_judge.py RUN_DIR pool:500:0 pool:500:0:1 pool:500:0:2

KIND: `pool` (style taught by the train rows and the source's judge pool, a judge of its own, as
evaluate trains it with `judge_pool_columns: [style]`) or `nopool` (the train rows only). RUN_DIR
is a finished run (`repro_default.py --keep DIR --profile emoji-sets`) whose scrape wrote
`data/raw/judge_records.parquet` (`scrape.emoji_sets.judge_pool: true`); the samples are drawn
once and kept in RUN_DIR/style-judge-samples.npy. MAP: the side of the feature map the trunk
keeps before its linear layer (evaluate's judge: 4, where a stroke is; 1: the map averaged,
texture statistics as in Gatys et al.'s style features, arXiv:1508.06576).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch.nn as nn

import sdlab.judge
from sdlab.config import load_params
from sdlab.data.shards import load_images
from sdlab.distribution import reconstruct
from sdlab.evaluate import judge_pool
from sdlab.io import spread_rows
from sdlab.judge import predict
from sdlab.label_judge import label_accuracy, train_label_judges
from sdlab.models.pipeline import load_pipeline
from sdlab.sampling import generate, use_scheduler


class MapClassifier(sdlab.judge.AttributeClassifier):
    """evaluate's judge with its trunk's last map pooled to `map_px` x `map_px` instead of 4 x 4."""

    map_px = 4

    def __init__(self, width: int = 32, classes=None):
        super().__init__(width, classes)
        self.trunk[3] = nn.AdaptiveAvgPool2d(self.map_px)
        self.trunk[5] = nn.Linear(self.map_px**2 * 4 * width, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("variants", nargs="+", help="KIND:STEPS:SEED, KIND pool or nopool")
    args = parser.parse_args()
    os.chdir(args.run)  # the records' image paths are relative to the workspace
    params = load_params("params.yaml")
    cfg, index = params.evaluate, Path("data/latents/index.parquet")
    train_rows = spread_rows(index, 8000, "split", "train").to_pylist()
    seen = {r["concept"] for r in train_rows}
    rows = [r for r in spread_rows(index, 100_000, "split", "val").to_pylist() if r["concept"] in seen]
    pipeline = load_pipeline("models/trained")
    cache = Path("style-judge-samples.npy")
    if not cache.exists():
        use_scheduler(pipeline, cfg.scheduler)
        prompts, seeds = [r["caption"] for r in rows], [cfg.seed + i for i in range(len(rows))]
        np.save(
            cache,
            generate(
                pipeline, prompts, seeds, steps=cfg.num_inference_steps, guidance=cfg.guidance_scale, batch_size=32
            ),
        )
    generated = np.load(cache)
    shards, max_pixels = Path("data/images/shards"), params.download.max_image_pixels
    real, real_train = load_images(shards, rows, max_pixels), load_images(shards, train_rows, max_pixels)
    reconstructed = reconstruct(pipeline.vae, real)
    pool = judge_pool(Path("data/raw"), params.download, None, cfg.judge_pool_rows)
    print(f"{len(rows)} held-out pairs; judge pool: {len(pool[1]) if pool else 0} images")
    print("| variant | real val | VAE reconstructions | samples | train s |\n|---|---|---|---|---|")
    for variant in args.variants:
        kind, steps, seed, *map_px = variant.split(":")
        MapClassifier.map_px = int(map_px[0]) if map_px else 4
        sdlab.judge.AttributeClassifier = MapClassifier  # what train_classifier builds
        started = time.perf_counter()
        (judge,) = train_label_judges(
            real_train,
            train_rows,
            ["style"],
            int(steps),
            int(seed),
            pipeline.vae,
            pool=pool if kind == "pool" else None,
            pool_columns=["style"],
        )
        seconds = time.perf_counter() - started
        scores = [label_accuracy(judge, x, rows)["style"] for x in (real, reconstructed, generated)]
        print(f"| {variant} | {scores[0]:.3f} | {scores[1]:.3f} | {scores[2]:.3f} | {seconds:.0f} |")
    confusions = Counter((r["style"], p) for r, p in zip(rows, predict(judge, real)["style"], strict=True))
    print("last judge on real val, (true, read): count:", dict(sorted(confusions.items())))


if __name__ == "__main__":
    main()
