"""DVC stage `embed`: a perceptual hash (and, with embed.model, CLIP image and caption embeddings)
of every downloaded image, once per image shard, by a pool of worker processes; resumable."""

from pathlib import Path

from sdlab.embed import embed_dataset
from sdlab.io import write_json
from sdlab.stage import parse_args, stage


@stage("embed")
def main(args, params):
    meta = embed_dataset(
        Path(args.index), Path(args.shards), Path(args.out), params.embed, params.download.max_image_pixels
    )
    write_json(Path(args.report) / "stats.json", meta)
    model = f", {params.embed.model} embeddings ({meta['dim']}-d)" if params.embed.model else ""
    print(f"embed: {meta['images']} images in {meta['shards']} shard(s): perceptual hashes{model}")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
