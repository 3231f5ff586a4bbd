"""DVC stage `scrape`: collect candidate records from `scrape.source`."""

from pathlib import Path

from sdlab.data.records import write_records
from sdlab.io import reset_dir, write_json
from sdlab.reports import sheet_of_records
from sdlab.sources import SOURCES
from sdlab.stage import parse_args, stage


@stage("scrape")
def main(args, params):
    out = reset_dir(args.out)
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)  # persisted: resumable progress of a killed run
    stats: dict = {}
    batches = SOURCES[params.scrape.source](params.scrape, out, state, stats)
    count, head = write_records(out / "records.parquet", batches)
    unreadable = sheet_of_records(Path(args.report) / "sheet.png", head, label="title")
    write_json(
        Path(args.report) / "stats.json",
        {"source": params.scrape.source, "records": count, **stats, "sheet_unreadable": unreadable},
    )
    print(f"scrape: {count} records from {params.scrape.source} {stats or ''}")


if __name__ == "__main__":
    main(parse_args(__doc__, "out", "state", "report"))
