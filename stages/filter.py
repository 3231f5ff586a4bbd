"""DVC stage `filter`: metadata rules; every dropped record keeps its reason."""

from pathlib import Path

from sdlab.data.filter import filter_records
from sdlab.data.records import DataError, check_columns, REQUIRED_COLUMNS
from sdlab.io import read_table, write_json, write_table
from sdlab.reports import sheet_of_records
from sdlab.stage import parse_args, stage


@stage("filter")
def main(args, params):
    records = read_table(Path(args.records))
    check_columns(records, REQUIRED_COLUMNS, str(args.records))
    kept, dropped, stats = filter_records(records, params.filter)
    write_json(Path(args.report) / "stats.json", stats)
    if kept.num_rows == 0:
        raise DataError(f"every one of {records.num_rows} records was dropped: {stats['dropped_by_reason']} "
                        "(loosen the filter params)")
    write_table(Path(args.out) / "records.parquet", kept)
    write_table(Path(args.out) / "dropped.parquet", dropped)
    sheet_of_records(Path(args.report) / "sheet.png", kept.to_pylist(), label="caption")
    print(f"filter: kept {kept.num_rows} of {records.num_rows}; dropped {stats['dropped_by_reason']}")


if __name__ == "__main__":
    main(parse_args(__doc__, "records", "out", "report"))
