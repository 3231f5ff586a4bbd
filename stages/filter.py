"""DVC stage `filter`: metadata rules; every dropped record keeps its reason."""

from pathlib import Path

import pyarrow.parquet as pq

from sdlab.data.filter import filter_file
from sdlab.data.records import REQUIRED_COLUMNS, DataError, check_columns
from sdlab.io import require_table, write_json
from sdlab.reports import sheet_of_records
from sdlab.stage import parse_args, stage


@stage("filter")
def main(args, params):
    records, out = require_table(args.records), Path(args.out)
    check_columns(pq.read_schema(records).names, REQUIRED_COLUMNS, str(records))
    stats, head = filter_file(records, out / "records.parquet", out / "dropped.parquet", params.filter)
    if stats["kept"] == 0:
        write_json(Path(args.report) / "stats.json", stats)
        raise DataError(
            f"every one of {stats['input']} records was dropped: {stats['dropped_by_reason']} "
            "(loosen the filter params)"
        )
    stats["sheet_unreadable"] = sheet_of_records(Path(args.report) / "sheet.png", head, label="caption")
    write_json(Path(args.report) / "stats.json", stats)
    print(f"filter: kept {stats['kept']} of {stats['input']}; dropped {stats['dropped_by_reason']}")


if __name__ == "__main__":
    main(parse_args(__doc__, "records", "out", "report"))
