"""DVC stage `scrape`: collect candidate records from `scrape.source`."""

from pathlib import Path

from sdlab.data.records import records_to_table
from sdlab.io import reset_dir, write_json, write_table
from sdlab.reports import sheet_of_records
from sdlab.sources import SOURCES
from sdlab.stage import parse_args, stage


@stage("scrape")
def main(args, params):
    out = reset_dir(args.out)
    records = SOURCES[params.scrape.source](params.scrape, out)
    table = records_to_table(records)
    write_table(out / "records.parquet", table)
    write_json(Path(args.report) / "stats.json", {"source": params.scrape.source, "records": table.num_rows})
    sheet_of_records(Path(args.report) / "sheet.png", records, label="title")
    print(f"scrape: {table.num_rows} records from {params.scrape.source}")


if __name__ == "__main__":
    main(parse_args(__doc__, "out", "report"))
