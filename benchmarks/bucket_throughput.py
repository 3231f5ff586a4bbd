"""Training throughput on aspect buckets against square training at the same pixel area.

    .venv/bin/python benchmarks/bucket_throughput.py [--steps 80] [--pairs 3] [--px 32]

The IFCT 2017 food photos (`make install` fetches them), each cropped to 1:2 .. 2:1 as
`make photos` does, go through the real download twice: `fit: crop` (every image a px x px
square) and `fit: bucket` (each at its aspect bucket, about px² pixels: 32 -> 32x32, 40x24,
24x40). One VAE (the default's layout, random weights: speed does not depend on them) encodes
both with the encode stage; then the train stage runs on each in turn, A B A B, with the
default profile's UNet at batch 64, validation off. Each run's steady samples/s comes from its
dvclive curve (first window dropped); pixels/s = samples/s x the mean stored image area.
Target: bucket / square pixels/s >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "benchmarks")]

from support.photos import PICTURES_TARBALL, photo_folder  # noqa: E402
from train_streamed_vs_in_memory import run, samples_per_s  # noqa: E402

from sdlab.config import DownloadConfig, Params, VaeConfig  # noqa: E402
from sdlab.data.download import download  # noqa: E402
from sdlab.data.images import bucket_size  # noqa: E402
from sdlab.io import write_table  # noqa: E402
from sdlab.models.vae import build_vae  # noqa: E402
from sdlab.sources.folder import scrape as folder_records  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--px", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo_folder(REPO / ".cache" / "emoji-tarballs" / PICTURES_TARBALL, tmp / "photos")
        defaults = Params()
        scrape = defaults.scrape.model_copy(
            update={
                "folder": defaults.scrape.folder.model_copy(
                    update={"path": str(tmp / "photos"), "caption_template": "a photo of {label}"}
                )
            }
        )
        batches = folder_records(scrape, tmp / "raw", tmp / "state", {})
        records = pa.Table.from_pylist([row for batch in batches for row in batch])
        torch.manual_seed(0)
        build_vae(VaeConfig(), args.px).save_pretrained(tmp / "vae")
        area = {}
        for fit in ("crop", "bucket"):
            work = tmp / fit
            work.mkdir()
            cfg = DownloadConfig(image_px=args.px, fit=fit, max_aspect_ratio=2.1, shard_size=128, processes=1)
            index, _ = download(records, cfg, work / "shards")
            rows = index.to_pylist()
            for i, row in enumerate(rows):
                row["split"] = "val" if i % 20 == 19 else "train"
            write_table(work / "index.parquet", pa.Table.from_pylist(rows))
            write_table(work / "captions.parquet", pa.table({"key": index["key"], "caption": index["caption"]}))
            area[fit] = statistics.mean(bucket_size(r["bucket"])[0] * bucket_size(r["bucket"])[1] for r in rows)
            params = defaults.model_dump()
            params["download"].update(image_px=args.px, fit=fit)
            params["train"].update(
                max_steps=args.steps,
                batch_size=64,
                warmup_steps=10,
                validation_every_steps=0,
                checkpoint_every_steps=args.steps,
            )
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            run(
                REPO,
                "encode.py",
                [
                    "--params",
                    "params.yaml",
                    "--index",
                    "index.parquet",
                    "--captions",
                    "captions.parquet",
                    "--shards",
                    "shards",
                    "--vae",
                    str(tmp / "vae"),
                    "--out",
                    "latents",
                    "--report",
                    "enc",
                ],
                work,
            )
        print(f"mean stored area: crop {area['crop']:.0f} px, bucket {area['bucket']:.0f} px", flush=True)
        ratios = []
        for pair in range(args.pairs):
            rates = {}
            for fit in ("crop", "bucket"):
                work = tmp / fit
                run(
                    REPO,
                    "train.py",
                    [
                        "--params",
                        "params.yaml",
                        "--latents",
                        "latents",
                        "--vae",
                        str(tmp / "vae"),
                        "--checkpoints",
                        f"ckpt-{pair}",
                        "--live",
                        f"live-{pair}",
                        "--out",
                        f"pipe-{pair}",
                        "--report",
                        f"report-{pair}",
                    ],
                    work,
                )
                rates[fit] = samples_per_s(work / f"live-{pair}")
            stats = json.loads((tmp / "bucket" / f"report-{pair}" / "stats.json").read_text())
            ratio = rates["bucket"] * area["bucket"] / (rates["crop"] * area["crop"])
            ratios.append(ratio)
            print(
                f"pair {pair + 1}: square {rates['crop']:.1f} samples/s, buckets {rates['bucket']:.1f} samples/s "
                f"({stats['buckets']}); pixels/s ratio {ratio:.3f}",
                flush=True,
            )
        print(f"median bucket / square pixels/s: {statistics.median(ratios):.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
