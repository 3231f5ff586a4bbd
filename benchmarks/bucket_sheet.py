"""The sheet a person judges an aspect-bucket run by: for each trained bucket, real val images of
that aspect above the samples drawn for their prompts at the same size (evaluate's rows and seeds).

    .venv/bin/python benchmarks/bucket_sheet.py RUN_DIR --per-bucket 8 --out sheet.png

RUN_DIR is a finished run (`repro_default.py --keep DIR --profile photos`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from sdlab.config import load_params
from sdlab.data.images import bucket_size
from sdlab.data.shards import load_image_list
from sdlab.io import first_rows
from sdlab.models.pipeline import load_pipeline
from sdlab.reports import bucket_rows
from sdlab.sampling import generate_at_sizes, use_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--per-bucket", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.run / "params.yaml")
    cfg = params.evaluate
    rows = first_rows(args.run / "data/latents/index.parquet", 10**6, "split", "val").to_pylist()
    pipeline = load_pipeline(args.run / "models/trained")
    use_scheduler(pipeline, cfg.scheduler)
    made = generate_at_sizes(
        pipeline,
        [r["caption"] for r in rows],
        [cfg.seed + i for i in range(len(rows))],
        [bucket_size(r["bucket"]) for r in rows],
        steps=cfg.num_inference_steps,
        guidance=cfg.guidance_scale,
        batch_size=cfg.batch_size,
    )
    real = load_image_list(args.run / "data/images/shards", rows)
    strips = [image for _, image in bucket_rows(real, made, rows, per_bucket=args.per_bucket)]
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    top = 0
    for strip in strips:
        sheet.paste(strip, (0, top))
        top += strip.height
    sheet.save(args.out)
    print(f"{args.out}: {len(strips)} buckets, {len(rows)} val rows sampled")


if __name__ == "__main__":
    main()
