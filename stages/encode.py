"""DVC stage `encode`: VAE latents of every image shard + text conditioning of every kept image,
by a pool of worker processes (one per GPU), resumable shard by shard."""

from pathlib import Path

import pyarrow.parquet as pq

from sdlab.encode import CAPTION_COLUMNS, encode_dataset, kept_rows
from sdlab.io import require_table, write_json
from sdlab.stage import parse_args, stage


@stage("encode")
def main(args, params):
    index, captions = require_table(args.index), require_table(args.captions)
    # only the columns planning needs; the wide record columns are streamed into the index at the end
    caption_columns = [c for c in CAPTION_COLUMNS if c in pq.read_schema(captions).names]
    rows = kept_rows(
        pq.read_table(index, columns=["key", "shard", "split"]),
        pq.read_table(captions, columns=["key", *caption_columns]),
    )
    meta = encode_dataset(
        rows,
        shards_dir=args.shards,
        vae_dir=args.vae,
        out_dir=args.out,
        image_px=params.download.image_px,
        cfg=params.encode,
        te=params.text_encoder,
        records=index,
        text_mask=params.train.denoiser == "transformer",
    )  # as PixArt's pipeline encodes
    stats = {
        "images": meta["images"],
        "shards": len(meta["shards"]),
        "train": sum(s["train"] for s in meta["shards"]),
        "val": sum(s["val"] for s in meta["shards"]),
    }
    write_json(Path(args.report) / "stats.json", stats)
    print(
        f"encode: {meta['images']} images in {stats['shards']} shard(s) -> latents {meta['latent_shape']} x "
        f"{meta['views']} view(s), text as {meta['text']}"
    )


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "captions", "shards", "vae", "out", "report"))
