"""The records table every source produces (`data/raw/records.parquet`)."""

from __future__ import annotations

import pyarrow as pa

REQUIRED_COLUMNS = ("key", "source", "url", "path", "title", "caption")


class DataError(ValueError):
    """A data table is missing, malformed or empty where it must not be."""


def records_to_table(records: list[dict]) -> pa.Table:
    """Build the records table; every record must carry the required columns."""
    if not records:
        raise DataError("scrape: the source returned no records")
    for column in REQUIRED_COLUMNS:
        if column not in records[0]:
            raise DataError(f"scrape: records lack the required column {column!r}")
    table = pa.Table.from_pylist(records)
    keys = table.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        raise DataError("scrape: record keys are not unique")
    return table


def check_columns(table: pa.Table, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
