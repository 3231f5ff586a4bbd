"""DVC stage `caption`: one caption per kept image, from `caption.backend`."""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sdlab.caption import CAPTIONERS, source_captions
from sdlab.io import read_table, write_json, write_table
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("caption")
def main(args, params):
    cfg = params.caption
    rows = read_table(Path(args.index))
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    result = CAPTIONERS[cfg.backend](rows, cfg, Path(args.shards), Path(args.cache))
    captions, reasons = pa.array(result.captions, pa.string()), pa.array(result.reasons, pa.string())
    table = pa.table(
        {
            "key": rows["key"],
            "caption": captions,
            "backend": pa.repeat(cfg.backend, rows.num_rows),
            "reason": reasons,
            **result.columns,
        }
    )
    if cfg.keep_original:  # the source's own caption beside the backend's, for train.caption_mix
        table = table.append_column("original_caption", source_captions(rows))
    write_table(Path(args.out) / "captions.parquet", table)
    counts = pc.value_counts(reasons).to_pylist()
    by_reason = {c["values"]: c["counts"] for c in counts if c["values"]}
    stats = {
        "captioned": rows.num_rows,
        "fallbacks": sum(by_reason.values()),
        "by_reason": dict(sorted(by_reason.items())),
        "empty": int(pc.sum(pc.equal(captions, "")).as_py() or 0),
        **result.stats,
    }
    if cfg.keep_original:
        stats["original_captions"] = int(pc.sum(pc.not_equal(table["original_caption"], "")).as_py() or 0)
    stats["sheet_unreadable"] = sheet_of_shards(
        Path(args.report) / "sheet.png",
        table.select(["key", "caption"]).append_column("shard", rows["shard"]),
        args.shards,
        max_pixels=params.download.max_image_pixels,
    )
    write_json(Path(args.report) / "stats.json", stats)
    print(f"caption: {rows.num_rows} captions ({stats['fallbacks']} fallbacks {stats['by_reason']})")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "cache", "out", "report"))
