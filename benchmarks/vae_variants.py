"""VAE settings side by side on one kept run's images: val PSNR and wall time per variant.

    .venv/bin/python benchmarks/vae_variants.py RUN --set vae.latent_channels=8 --set vae.steps=900 ...

RUN is a finished run folder (`repro_default.py --keep`, e.g. the Noto profile's). Each `--set`
is one variant (`key=value` pairs joined by `;` for several changes at once) trained with
the vae stage's own functions on RUN's train split, from RUN's params; the baseline (RUN's
params as they are) runs first unless --no-baseline. Prints a markdown table for BENCHMARKS.md. Variants run one
after another, so compare them within one invocation on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.compute as pc
import torch
import yaml

from sdlab.config import VaeConfig, read_yaml
from sdlab.data.shards import load_images
from sdlab.io import read_table
from sdlab.models.vae import build_vae, reconstruction_psnr, to_tensor, train_vae


def variant(cfg, assignments: str):
    changes = {}
    for pair in filter(None, assignments.split(";")):
        key, _, value = pair.partition("=")
        changes[key.removeprefix("vae.")] = yaml.safe_load(value)
    return cfg.model_copy(update=changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--set", action="append", default=[], help="one variant: key=value[;key=value...]")
    parser.add_argument("--no-baseline", action="store_true", help="skip RUN's own settings (its vae stage ran them)")
    args = parser.parse_args()
    raw = read_yaml(args.run / "params.yaml")  # only the vae section and the image size matter here
    vae_cfg, image_px = VaeConfig.model_validate(raw["vae"]), raw["download"]["image_px"]
    index = read_table(args.run / "data/dedup/index.parquet")
    shards = args.run / "data/images/shards"
    split = lambda name: to_tensor(load_images(shards, index.filter(pc.equal(index["split"], name)).to_pylist()))  # noqa: E731
    train, val = split("train"), split("val")[:256]
    print(f"{args.run}: {len(train)} train / {len(val)} val images at {image_px} px\n")
    print("| variant | parameters | steps | val PSNR (dB) | seconds |\n|---|---|---|---|---|")
    for assignments in ([] if args.no_baseline else [""]) + args.set:
        cfg = variant(vae_cfg, assignments)
        torch.manual_seed(cfg.seed)
        vae = build_vae(cfg, image_px)
        started = time.perf_counter()
        train_vae(vae, train, cfg)
        seconds = time.perf_counter() - started
        psnr = reconstruction_psnr(vae, val, 128)
        size = sum(p.numel() for p in vae.parameters())
        print(
            f"| {assignments or 'as run'} | {size / 1e6:.2f}M | {cfg.steps} | {psnr:.2f} | {seconds:.0f} |", flush=True
        )


if __name__ == "__main__":
    main()
