"""DVC stage `caption`: one caption per kept image, from `caption.backend`."""

from collections import Counter
from pathlib import Path

import pyarrow as pa

from sdlab.caption import CAPTIONERS
from sdlab.io import read_table, write_json, write_table
from sdlab.reports import sheet_of_shards
from sdlab.stage import parse_args, stage


@stage("caption")
def main(args, params):
    cfg = params.caption
    rows = read_table(Path(args.index)).to_pylist()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    result = CAPTIONERS[cfg.backend](rows, cfg, Path(args.shards), Path(args.cache))
    captions = result.captions
    table = pa.table({"key": [r["key"] for r in rows], "caption": [c for c, _ in captions],
                      "backend": [cfg.backend] * len(rows), "reason": [why for _, why in captions],
                      **result.columns})
    write_table(Path(args.out) / "captions.parquet", table)
    reasons = Counter(why for _, why in captions if why)
    stats = {"captioned": len(rows), "fallbacks": sum(reasons.values()), "by_reason": dict(sorted(reasons.items())),
             "empty": sum(1 for c, _ in captions if not c), **result.stats}
    write_json(Path(args.report) / "stats.json", stats)
    sheet_of_shards(Path(args.report) / "sheet.png", rows, args.shards,
                    {r["key"]: c for r, (c, _) in zip(rows, captions)})
    print(f"caption: {len(rows)} captions ({stats['fallbacks']} fallbacks {stats['by_reason']})")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "cache", "out", "report"))
