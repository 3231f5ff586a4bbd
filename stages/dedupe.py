"""DVC stage `dedupe`: drop exact duplicates by MD5, assign the train/val split."""

from pathlib import Path

from sdlab.data.dedupe import SplitRule, dedupe_file
from sdlab.data.records import DataError
from sdlab.io import write_json
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("dedupe")
def main(args, params):
    out = Path(args.out)
    rule = SplitRule(**params.dedupe.model_dump())
    stats = dedupe_file(Path(args.index), out / "index.parquet", out / "duplicates.parquet", rule)
    stats["sheet_unreadable"] = sheet_of_shards(
        Path(args.report) / "sheet.png",
        out / "index.parquet",
        args.shards,
        lambda r: f"{r['split']}: {r.get('title') or r['key']}",
        max_pixels=params.download.max_image_pixels,
    )
    write_json(Path(args.report) / "stats.json", stats)
    for split in ("train", "val"):
        if stats[split] == 0:
            raise DataError(
                f"dedupe: the {split} split is empty ({stats['kept']} images kept, "
                f"dedupe.val_fraction {params.dedupe.val_fraction}): add images or change val_fraction"
            )
    print(
        f"dedupe: kept {stats['kept']} ({stats['train']} train, {stats['val']} val), {stats['duplicates']} duplicates"
    )


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
