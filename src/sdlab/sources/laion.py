"""LAION-style metadata (`scrape.source: laion`): a parquet file, a glob of them, or a
`datasets` hub id, streamed in row-group batches and mapped onto the records layout.

Column names come from `scrape.laion.columns` (the first listed name the metadata has wins),
so LAION-400M/2B/5B, LAION-Aesthetics and non-LAION layouts all map onto: url, caption,
width, height, similarity, punsafe, pwatermark, aesthetic. url and caption are required.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.config import LaionColumns, LaionConfig, ScrapeConfig
from sdlab.data.records import DataError

REQUIRED = ("url", "caption")
NUMERIC = ("width", "height", "similarity", "punsafe", "pwatermark", "aesthetic")


def map_columns(names: list[str], mapping: LaionColumns, where: str) -> dict[str, str]:
    """canonical -> column in the metadata; a missing required column names its candidates."""
    present = set(names)
    chosen = {}
    for canonical, candidates in mapping.model_dump().items():
        found = next((name for name in candidates if name in present), None)
        if found is not None:
            chosen[canonical] = found
        elif canonical in REQUIRED:
            raise DataError(
                f"{where}: no {canonical} column: none of {candidates} is among its columns "
                f"{sorted(present)[:20]}; set scrape.laion.columns.{canonical}"
            )
    return chosen


def local_files(spec: str) -> list[Path] | None:
    """Parquet files named by a path, a folder or a glob; None if `spec` names nothing local."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"scrape.laion.metadata: {spec} holds no *.parquet file")
        return files
    matches = sorted(Path(p) for p in glob.glob(spec))
    if matches:
        return matches
    if glob.has_magic(spec) or spec.startswith((".", "/")) or spec.endswith(".parquet"):
        raise DataError(f"scrape.laion.metadata: {spec} matches no file")
    return None  # a hub id


def local_batches(files: list[Path], cfg: LaionConfig) -> Iterator[tuple[pa.Table, dict[str, str]]]:
    for file in files:
        source = pq.ParquetFile(file)
        columns = map_columns(source.schema_arrow.names, cfg.columns, str(file))
        for batch in source.iter_batches(batch_size=cfg.batch_rows, columns=sorted(set(columns.values()))):
            yield pa.Table.from_batches([batch]), columns


def hub_batches(cfg: LaionConfig) -> Iterator[tuple[pa.Table, dict[str, str]]]:
    """Stream a hub dataset with `datasets` (nothing is downloaded up front)."""
    try:
        import datasets

        stream = datasets.load_dataset(cfg.metadata, split=cfg.split, streaming=True)
        columns = None
        for batch in stream.iter(batch_size=cfg.batch_rows):
            table = pa.Table.from_pydict(batch)
            columns = columns or map_columns(table.column_names, cfg.columns, cfg.metadata)
            yield table, columns
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 (offline, unknown id, gated: all one message)
        raise DataError(
            f"scrape.laion.metadata: {cfg.metadata!r} is not a local parquet file or glob, and "
            f"loading it as a `datasets` hub id failed: {type(exc).__name__}: {exc}"
        ) from None


def to_records(table: pa.Table, columns: dict[str, str], first_row: int) -> pa.Table:
    """Records layout for one batch; keys number the rows of the whole metadata."""
    rows = table.num_rows
    index = pa.array(np.arange(first_row, first_row + rows, dtype=np.int64))
    keys = pc.binary_join_element_wise("laion-", pc.utf8_lpad(pc.cast(index, pa.string()), 10, "0"), "")
    caption = pc.fill_null(table.column(columns["caption"]).cast(pa.string()), "")
    empty = pa.array([""] * rows, pa.string())
    data = {
        "key": keys,
        "source": pa.array(["laion"] * rows, pa.string()),
        "url": pc.fill_null(table.column(columns["url"]).cast(pa.string()), ""),
        "path": empty,
        "title": caption,
        "caption": caption,
    }
    for name in NUMERIC:
        if name in columns:
            data[name] = table.column(columns[name]).cast(pa.float64())
    return pa.table(data)


def scrape(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> Iterator[pa.Table]:
    cfg = config.laion
    files = local_files(cfg.metadata)
    batches = local_batches(files, cfg) if files is not None else hub_batches(cfg)
    rows = 0
    for table, columns in batches:
        if cfg.max_rows is not None:
            table = table.slice(0, cfg.max_rows - rows)
        yield to_records(table, columns, rows)
        rows += table.num_rows
        if cfg.max_rows is not None and rows >= cfg.max_rows:
            break
    stats.update({"metadata_files": len(files) if files else 0, "metadata_rows_read": rows})
