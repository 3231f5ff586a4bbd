"""DVC stage `encode`: VAE latents of every kept image + text hidden states of each distinct
caption, by a pool of worker processes (one per GPU), resumable shard by shard."""

from pathlib import Path

from sdlab.encode import encode_dataset
from sdlab.io import read_table, write_json
from sdlab.stage import parse_args, stage


@stage("encode")
def main(args, params):
    index = read_table(Path(args.index))
    captions = dict(zip(*read_table(Path(args.captions)).select(["key", "caption"]).to_pydict().values()))
    rows = [{**row, "caption": captions[row["key"]]} for row in index.to_pylist()]
    meta = encode_dataset(rows, args.shards, args.vae, args.out, params.download.image_px,
                          params.encode, params.text_encoder)
    write_json(Path(args.report) / "stats.json", {k: meta[k] for k in ("images", "captions", "workers")})
    print(f"encode: {meta['images']} images -> latents {meta['latent_shape']} x {meta['views']} view(s), "
          f"{meta['captions']} distinct captions, {meta['workers']} worker(s)")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "captions", "shards", "vae", "out", "report"))
