"""The sheet a person judges a real-artwork run by: held-out (concept, style) prompts, each real
val image above the sample the evaluate stage drew for its prompt (same rows, same seeds).

    .venv/bin/python benchmarks/real_vs_generated.py RUN_DIR --rows 64 --out sheet.png

RUN_DIR is a finished run (`repro_default.py --keep DIR --profile emoji-sets`); rows are the
val rows evaluate samples (spread over the index), keeping those whose concept was trained on
in another style; `--unseen` takes the never-trained concepts instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.config import load_params
from sdlab.data.shards import load_images
from sdlab.io import spread_rows
from sdlab.models.pipeline import load_pipeline
from sdlab.reports import sample_grid
from sdlab.sampling import generate, use_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--unseen", action="store_true", help="concepts never trained on, not held-out pairs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.run / "params.yaml")
    cfg, index = params.evaluate, args.run / "data/latents/index.parquet"
    rows = spread_rows(index, cfg.num_samples, "split", "val").to_pylist()  # as evaluate picks them
    column = cfg.concept_column or "key"
    table = pq.read_table(index, columns=[column, "split"])
    trained = set(table.filter(pc.equal(table["split"], "train"))[column].to_pylist())
    chosen = [i for i, r in enumerate(rows) if (r[column] in trained) != args.unseen][: args.rows]
    pipeline = load_pipeline(args.run / "models/trained")
    use_scheduler(pipeline, cfg.scheduler)
    prompts = [rows[i]["caption"] for i in chosen]
    seeds = [cfg.seed + i for i in chosen]  # evaluate's seed for that row
    made = generate(
        pipeline, prompts, seeds, steps=cfg.num_inference_steps, guidance=cfg.guidance_scale, batch_size=cfg.batch_size
    )
    real = load_images(args.run / "data/images/shards", [rows[i] for i in chosen])
    images, labels = [], []
    for start in range(0, len(chosen), args.columns):  # a row of real images, then their samples
        part = slice(start, start + args.columns)
        images += [real[part], made[part]]
        labels += [f"real: {p}" for p in prompts[part]] + ["generated"] * len(prompts[part])
    sample_grid(np.concatenate(images), labels, args.columns, label_px=40).save(args.out)
    print(f"{args.out}: {len(chosen)} prompts")


if __name__ == "__main__":
    main()
