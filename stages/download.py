"""DVC stage `download`: images into webdataset shards + an index row per record."""

from pathlib import Path

from sdlab.data.download import download
from sdlab.data.records import DataError
from sdlab.io import read_table, reset_dir, write_json, write_table
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("download")
def main(args, params):
    records = read_table(Path(args.records))
    out = reset_dir(args.out)
    index, stats = download(records, params.download, out / "shards", Path(args.cache))
    Path(args.cache).mkdir(parents=True, exist_ok=True)  # a DVC out, even when nothing was fetched
    write_table(out / "index.parquet", index)
    stats["sheet_unreadable"] = sheet_of_shards(
        Path(args.report) / "sheet.png", index, out / "shards", max_pixels=params.download.max_image_pixels
    )
    write_json(Path(args.report) / "stats.json", stats)
    if stats["ok"] == 0:
        raise DataError(f"no image could be used: {stats['failed_by_reason']}")
    print(f"download: {stats['ok']} ok, {stats['failed']} failed {stats['failed_by_reason']}")


if __name__ == "__main__":  # img2dataset spawns workers that re-import this module
    main(parse_args(__doc__, "records", "out", "cache", "report"))
