"""Peak memory and speed of the real train stage as the dataset grows: 10k, 100k, 1M images.

    .venv/bin/python benchmarks/train_memory_scaling.py [--sizes 10000 100000 1000000] [--steps 60]

For each N, writes a latents folder in the encode stage's own format (`sdlab.latents`):
4x32x32 fp16 latents (one draw, as `encode.store: sample`; LAION at 256 px through SD's VAE)
and text as token ids (`encode.text: tokens`, 77 MiniLM ids + mask: the encoder runs in the
step), in shards of 2,500 images (a shuffle window of 4 shards is then 10k images at every N,
so the 10k run is not favoured by a smaller window); then runs `stages/train.py` on it for a fixed number of
steps (a small UNet, batch 64, `shuffle_shards` 4) and reads the stage's peak RSS
(getrusage of the finished child) and its steady samples/s (dvclive's train/samples_per_s,
first window dropped). Shards are copies of one random block (content does not change what
is read), so 1M images cost ~8.4 GB of disk and a minute or two to write. Targets: peak RSS at
1M <= 1.15x the peak at 10k, samples/s at 1M >= 0.9x the 10k figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.config import TextEncoderConfig, VaeConfig  # noqa: E402
from sdlab.latents import latent_path, save_checked, text_path  # noqa: E402
from sdlab.models.vae import build_vae  # noqa: E402

SHARD = 2_500
SHAPE = (4, 32, 32)
LENGTH = 77


def write_latents(
    root: Path,
    images: int,
    shape=SHAPE,
    text: str = "tokens",
    text_dim: int = 384,
    text_encoder: dict | None = None,
    shard: int = SHARD,
) -> None:
    """N images in the stage's format: one random block written under every shard name."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(shard, 1, *shape, generator=generator).half()
    ids = torch.randint(1000, 29000, (shard, LENGTH), generator=generator, dtype=torch.int32)
    mask = torch.ones(shard, LENGTH, dtype=torch.uint8)
    conditioning = {"split": torch.zeros(shard, dtype=torch.uint8)}
    uncond = {"input_ids": ids[:1] * 0, "attention_mask": mask[:1]}
    if text == "tokens":
        conditioning.update(input_ids=ids, attention_mask=mask)
    else:
        conditioning["hidden"] = torch.randn(shard, LENGTH, text_dim, generator=generator).half()
        uncond["hidden"] = conditioning["hidden"][:1]
    shards = []
    for number in range(images // shard):
        stem = f"{number:05d}"
        save_checked(latent_path(root, stem), {"sample": sample}, f"bench-{stem}", keys=[])
        save_checked(text_path(root, stem), conditioning, f"bench-text-{stem}")
        shards.append(
            {
                "name": stem,
                "rows": shard,
                "train": shard,
                "val": 0,
                "latents": f"bench-{stem}",
                "text": f"bench-text-{stem}",
            }
        )
    save_checked(root / "uncond.safetensors", uncond, "uncond")
    meta = {
        "latent_shape": list(shape),
        "store": "sample",
        "views": 1,
        "text": text,
        "text_dim": text_dim,
        "images": images,
        "shards": shards,
        "scaling_factor": 1.0,
        "dtype": "float16",
        "text_encoder": text_encoder or TextEncoderConfig().model_dump(),
    }
    (root / "meta.json").write_text(json.dumps(meta))
    pq.write_table(pa.table({"key": ["k0"], "split": ["train"], "caption": [""]}), root / "index.parquet")


def run_stage(root: Path, steps: int, unet: dict | None = None, batch_size: int = 64, log_every: int = 10) -> dict:
    run = root / "run"
    run.mkdir()
    unet = unet or {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "attention_head_dim": 8,
        "cross_attention_levels": [False, True],
    }
    params = {
        "train": {
            "unet": unet,
            "max_steps": steps,
            "batch_size": batch_size,
            "shuffle_shards": 4,
            "warmup_steps": 5,
            "checkpoint_every_steps": steps,
            "log_every_steps": log_every,
        }
    }
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
        sys.executable,
        str(REPO / "stages" / "train.py"),
        "--params",
        str(run / "params.yaml"),
        "--latents",
        str(root / "latents"),
        "--vae",
        str(root / "vae"),
        "--checkpoints",
        str(run / "ckpt"),
        "--live",
        str(run / "live"),
        "--out",
        str(run / "pipeline"),
        "--report",
        str(run / "report"),
    ]
    subprocess.run(command, cwd=run, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(run / "live" / "plots" / "metrics" / "train" / "samples_per_s.tsv") as handle:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(handle, delimiter="\t")][1:]
    return {"peak_rss_gib": peak / 2**20, "samples_per_s": sum(rates) / len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    results = {}
    # RUSAGE_CHILDREN keeps the largest peak of any child so far: each size runs in a child of its own
    for images in args.sizes:
        if len(args.sizes) > 1:
            out = subprocess.run(
                [sys.executable, __file__, "--sizes", str(images), "--steps", str(args.steps)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[images] = json.loads(out.strip().splitlines()[-1])
            print(
                f"N={images:>9,}: peak RSS {results[images]['peak_rss_gib']:.3f} GiB, "
                f"{results[images]['samples_per_s']:.1f} samples/s",
                flush=True,
            )
            continue
        with tempfile.TemporaryDirectory(dir=REPO / ".bench-tmp" if (REPO / ".bench-tmp").is_dir() else None) as tmp:
            root = Path(tmp)
            write_latents(root / "latents", images)
            build_vae(VaeConfig(block_out_channels=[8, 16]), 64).save_pretrained(root / "vae")
            print(json.dumps(run_stage(root, args.steps)))
            shutil.rmtree(root / "latents")
        return
    small, large = results[min(results)], results[max(results)]
    print(
        f"peak RSS {max(results):,} / {min(results):,}: {large['peak_rss_gib'] / small['peak_rss_gib']:.3f} "
        "(target <= 1.15)"
    )
    print(
        f"samples/s {max(results):,} / {min(results):,}: {large['samples_per_s'] / small['samples_per_s']:.3f} "
        "(target >= 0.9)"
    )


if __name__ == "__main__":
    main()
