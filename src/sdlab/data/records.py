"""The records table every source produces (`data/raw/records.parquet`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.errors import DataError as DataError  # its home is errors.py; re-exported
from sdlab.io import atomic_path

JUDGE_RECORDS = "judge_records.parquet"  # beside records.parquet: evaluation-only records (the judge's)

REQUIRED_COLUMNS = ("key", "source", "url", "path", "title", "caption")


def check_columns(names: list[str], columns: tuple[str, ...], where: str) -> None:
    """DataError naming every one of `columns` that is not among `names`."""
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}")


def write_records(path: Path, batches: Iterable[list[dict] | pa.Table], head: int = 1000) -> tuple[int, list[dict]]:
    """Stream record batches into one parquet file (atomically); return (rows, the first `head` rows).

    The first batch fixes the schema; keys must be unique across all batches."""
    with atomic_path(path) as temp:
        rows, first_rows = _stream(temp, batches, head)
        if rows == 0:
            raise DataError("scrape: the source returned no records")
        distinct = pc.count_distinct(pq.read_table(temp, columns=["key"]).column("key")).as_py()
        if distinct != rows:
            raise DataError(f"scrape: record keys are not unique ({rows - distinct} repeated)")
    return rows, first_rows


def _stream(temp: Path, batches: Iterable[list[dict] | pa.Table], head: int) -> tuple[int, list[dict]]:
    writer, rows, first_rows = None, 0, []
    try:
        for batch in batches:
            if isinstance(batch, list):
                if not batch:
                    continue
                batch = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
            if writer is None:
                check_columns(batch.column_names, REQUIRED_COLUMNS, "scrape: records")
                writer = pq.ParquetWriter(temp, batch.schema)
            elif batch.schema.names != writer.schema.names:
                raise DataError(
                    f"scrape: a later batch has columns {batch.schema.names}, the first had {writer.schema.names}"
                )
            writer.write_table(batch.cast(writer.schema))
            if len(first_rows) < head:
                first_rows += batch.slice(0, head - len(first_rows)).to_pylist()
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows, first_rows
