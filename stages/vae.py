"""DVC stage `vae`: train a small KL autoencoder on the train split, or pin a pretrained one."""

from pathlib import Path

import pyarrow.compute as pc
import torch

from sdlab.data.images import bucket_size
from sdlab.data.shards import load_images
from sdlab.io import atomic_dir, read_table, write_json
from sdlab.models.vae import (
    build_vae,
    latent_scaling_factor,
    load_pretrained_vae,
    reconstruction_psnr,
    to_tensor,
    train_vae,
)
from sdlab.stage import parse_args, stage


def shortest_side(index) -> int:
    """The shortest side of any aspect bucket in the index: a square every image covers."""
    return min(min(bucket_size(b)) for b in set(index["bucket"].to_pylist()) if b)


@stage("vae")
def main(args, params):
    cfg = params.vae
    index = read_table(Path(args.index))
    square = shortest_side(index) if params.download.fit == "bucket" else None  # crops of real pixels
    val_rows = index.filter(pc.equal(index["split"], "val")).to_pylist()[:256]
    val = to_tensor(load_images(args.shards, val_rows, square_px=square)) if val_rows else None
    stats = {}
    if cfg.pretrained is None:
        torch.manual_seed(cfg.seed)
        train_rows = index.filter(pc.equal(index["split"], "train")).to_pylist()
        train = to_tensor(load_images(args.shards, train_rows, square_px=square))
        vae = build_vae(cfg, params.download.image_px)
        losses = train_vae(vae, train, cfg)
        scaling = latent_scaling_factor(vae, train[:2048], 256, cfg.seed)
        vae.register_to_config(scaling_factor=scaling)
        stats.update(source="trained", final_loss=losses[-1] if losses else None, train_images=len(train))
    else:
        vae = load_pretrained_vae(cfg.pretrained, cfg.subfolder).eval()
        stats.update(source=cfg.pretrained)
    if val is not None:
        stats["val_psnr_db"] = reconstruction_psnr(vae, val, 128)
    stats.update(scaling_factor=vae.config.scaling_factor, parameters=sum(p.numel() for p in vae.parameters()))
    with atomic_dir(args.out) as temp:
        vae.save_pretrained(temp)
    write_json(Path(args.report) / "stats.json", stats)
    print(f"vae: {stats}")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
