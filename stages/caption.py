"""DVC stage `caption`: one caption per kept image, from `caption.backend`."""

from collections import Counter
from pathlib import Path

import pyarrow as pa

from sdlab.caption import CAPTIONERS
from sdlab.io import read_table, write_json, write_table
from sdlab.stage import parse_args, stage


@stage("caption")
def main(args, params):
    rows = read_table(Path(args.index)).to_pylist()
    results = CAPTIONERS[params.caption.backend](rows, params.caption, Path(args.shards))
    table = pa.table({"key": [r["key"] for r in rows], "caption": [c for c, _ in results],
                      "backend": [params.caption.backend] * len(rows), "reason": [why for _, why in results]})
    write_table(Path(args.out) / "captions.parquet", table)
    reasons = Counter(why for _, why in results if why)
    stats = {"captioned": len(rows), "fallbacks": sum(reasons.values()), "by_reason": dict(sorted(reasons.items())),
             "empty": sum(1 for c, _ in results if not c)}
    write_json(Path(args.report) / "stats.json", stats)
    print(f"caption: {len(rows)} captions ({stats['fallbacks']} fallbacks {stats['by_reason']})")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "shards", "out", "report"))
