"""What the label judges can read at a higher resolution: the evaluate stage's judges (category,
sub-category and the concept head from the train rows, style from the train rows + the judge
pool), trained and read on the real images of a kept emoji-sets run at each `--px`, made from the
raw 64 px PNGs as the download stage makes them. Same rows, steps and seed for every size; no VAE
reconstructions mixed in (the run's VAE exists at its own size only), so the 32 px row is the
baseline to compare with, not evaluate's number.

    .venv/bin/python benchmarks/judge_resolution.py RUN_DIR --px 32 64 --steps 500

RUN_DIR is a finished run (`repro_default.py --keep DIR --profile emoji-sets`) with its
`data/raw` (records and `judge_records.parquet`). Prints a markdown table: accuracy on the real val
images of the held-out (concept, style) pairs per column, and seconds to train.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from sdlab.config import load_params
from sdlab.data.packing import prepare
from sdlab.data.shards import png_to_array
from sdlab.evaluate import judge_pool
from sdlab.io import spread_rows
from sdlab.label_judge import predicted_accuracy, train_label_judges


def images_at(rows: list[dict], download) -> np.ndarray:
    """The rows' raw images as the download stage makes them at `download.image_px`."""
    made = [prepare(Path(row["path"]).read_bytes(), download) for row in rows]
    bad = [row["key"] for row, m in zip(rows, made, strict=True) if isinstance(m, Exception)]
    assert not bad, f"raw images that no longer prepare: {bad[:3]}"
    return np.stack([png_to_array(m.png) for m in made])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--px", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    os.chdir(args.run)  # the records' image paths are relative to the workspace
    params = load_params("params.yaml")
    cfg, index = params.evaluate, Path("data/latents/index.parquet")
    columns = [*cfg.label_columns, cfg.concept_column]
    train_rows = spread_rows(index, 8000, "split", "train").to_pylist()
    seen = {r[cfg.concept_column] for r in train_rows}
    val_rows = [r for r in spread_rows(index, 100_000, "split", "val").to_pylist() if r[cfg.concept_column] in seen]
    print(f"{len(train_rows)} train rows, {len(val_rows)} held-out pairs, {args.steps} steps, columns {columns}")
    print("| px | " + " | ".join(columns) + " | seconds to train |")
    print("|---|" + "---|" * (len(columns) + 1))
    taught = [c for c in cfg.label_columns if cfg.judge_pool_columns is None or c in cfg.judge_pool_columns]
    for px in args.px:
        download = params.download.model_copy(update={"image_px": px})
        train, val = images_at(train_rows, download), images_at(val_rows, download)
        pool = judge_pool(Path("data/raw"), download, None, cfg.judge_pool_rows)
        start = time.perf_counter()
        judges = train_label_judges(
            train,
            train_rows,
            columns,
            args.steps,
            cfg.seed,
            pool=pool,
            pool_columns=taught,
        )
        seconds = time.perf_counter() - start
        read = predicted_accuracy(judges, val, val_rows)
        print(f"| {px} | " + " | ".join(f"{read[c]:.3f}" for c in columns) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
