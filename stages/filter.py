"""DVC stage `filter`: metadata rules; every dropped record keeps its reason."""

from pathlib import Path

import pyarrow.parquet as pq

from sdlab.data.filter import filter_file
from sdlab.data.records import REQUIRED_COLUMNS, DataError
from sdlab.io import write_json
from sdlab.reports import sheet_of_records
from sdlab.stage import parse_args, stage


@stage("filter")
def main(args, params):
    records, out = Path(args.records), Path(args.out)
    if not records.is_file():
        raise FileNotFoundError(f"{records}: table not found (did the previous stage run?)")
    missing = [c for c in REQUIRED_COLUMNS if c not in pq.read_schema(records).names]
    if missing:
        raise DataError(f"{records}: missing column(s) {', '.join(missing)}")
    stats, head = filter_file(records, out / "records.parquet", out / "dropped.parquet", params.filter)
    write_json(Path(args.report) / "stats.json", stats)
    if stats["kept"] == 0:
        raise DataError(f"every one of {stats['input']} records was dropped: {stats['dropped_by_reason']} "
                        "(loosen the filter params)")
    sheet_of_records(Path(args.report) / "sheet.png", head, label="caption")
    print(f"filter: kept {stats['kept']} of {stats['input']}; dropped {stats['dropped_by_reason']}")


if __name__ == "__main__":
    main(parse_args(__doc__, "records", "out", "report"))
