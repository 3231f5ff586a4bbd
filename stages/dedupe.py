"""DVC stage `dedupe`: drop exact duplicates by MD5, assign the train/val split."""

from pathlib import Path

from sdlab.data.dedupe import dedupe_file
from sdlab.io import write_json
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("dedupe")
def main(args, params):
    out = Path(args.out)
    stats = dedupe_file(Path(args.index), out / "index.parquet", out / "duplicates.parquet", params.dedupe.val_fraction)
    write_json(Path(args.report) / "stats.json", stats)
    sheet_of_shards(Path(args.report) / "sheet.png", out / "index.parquet", args.shards,
                    lambda r: f"{r['split']}: {r.get('title') or r['key']}")
    print(f"dedupe: kept {stats['kept']} ({stats['train']} train, {stats['val']} val), "
          f"{stats['duplicates']} duplicates")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
