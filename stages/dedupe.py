"""DVC stage `dedupe`: drop exact duplicates by MD5, assign the train/val split."""

from pathlib import Path

from sdlab.data.dedupe import dedupe
from sdlab.io import read_table, write_json, write_table
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("dedupe")
def main(args, params):
    index = read_table(Path(args.index))
    kept, duplicates, stats = dedupe(index, params.dedupe.val_fraction)
    write_table(Path(args.out) / "index.parquet", kept)
    write_table(Path(args.out) / "duplicates.parquet", duplicates)
    write_json(Path(args.report) / "stats.json", stats)
    kept_rows = kept.to_pylist()
    labels = {r["key"]: f"{r['split']}: {r.get('title') or r['key']}" for r in kept_rows}
    sheet_of_shards(Path(args.report) / "sheet.png", kept_rows, args.shards, labels)
    print(f"dedupe: kept {stats['kept']} ({stats['train']} train, {stats['val']} val), "
          f"{stats['duplicates']} duplicates")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
