"""File I/O in one place: every output is written to a temp name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in blocks: the one place files are hashed for identity."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp sibling of `path` to write; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(path)
    try:
        yield temp
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_table(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path) as temp:
        pq.write_table(table, temp)


def require_table(path: str | Path) -> Path:
    """`path`, or FileNotFoundError saying which stage's output is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found (did the previous stage run?)")
    return path


def read_table(path: str | Path) -> pa.Table:
    return pq.read_table(require_table(path))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder that replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(path)
    temp.mkdir()
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(temp, path)


def reset_dir(path: str | Path) -> Path:
    """Empty `path` (a stage output folder DVC does not persist) and return it."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def first_rows(path: str | Path, count: int, column: str, value: Any, columns: list[str] | None = None) -> pa.Table:
    """The first `count` rows whose `column` equals `value`, read batch by batch (never the whole table)."""
    import pyarrow.compute as pc

    parquet = pq.ParquetFile(require_table(path))
    read = None if columns is None else list(dict.fromkeys([*columns, column]))
    found, have = [], 0
    for batch in parquet.iter_batches(batch_size=65_536, columns=read):
        match = batch.filter(pc.equal(batch.column(column), value))
        found.append(match.slice(0, count - have) if columns is None else match.select(columns).slice(0, count - have))
        have += len(found[-1])
        if have >= count:
            break
    schema = parquet.schema_arrow if columns is None else pa.schema([parquet.schema_arrow.field(c) for c in columns])
    return pa.Table.from_batches(found, schema=schema) if found else schema.empty_table()


def spread_rows(path: str | Path, count: int, column: str, value: Any) -> pa.Table:
    """`count` rows whose `column` equals `value`, taken evenly over the table (every part of an
    index ordered by source, vendor or shard keeps its share); two passes, batch by batch."""
    import pyarrow.compute as pc

    parquet = pq.ParquetFile(require_table(path))
    total = sum(
        int(pc.sum(pc.equal(batch.column(0), value)).as_py() or 0)
        for batch in parquet.iter_batches(batch_size=65_536, columns=[column])
    )
    taken = min(count, total)
    wanted = {i * total // taken for i in range(taken)}
    found, seen = [], 0
    for batch in parquet.iter_batches(batch_size=65_536):
        match = batch.filter(pc.equal(batch.column(column), value))
        take = [i for i in range(match.num_rows) if seen + i in wanted]
        found.append(match.take(pa.array(take, pa.int64())))
        seen += match.num_rows
    return pa.Table.from_batches(found, schema=parquet.schema_arrow) if found else parquet.schema_arrow.empty_table()


def folder_fingerprint(path: str | Path) -> str:
    """sha256 over a model folder's files (config and weights)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def arrow_digest(*arrays: pa.Array) -> str:
    """sha256 over the values of Arrow arrays (strings or numbers), without Python objects per row."""
    digest = hashlib.sha256()
    for array in arrays:
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            width = np.int64 if pa.types.is_large_string(array.type) else np.int32
            _, offsets, data = array.buffers()
            bounds = np.frombuffer(offsets, width)[array.offset : array.offset + len(array) + 1]
            digest.update((bounds - bounds[0]).tobytes())
            digest.update(memoryview(data)[bounds[0] : bounds[-1]] if data is not None else b"")
        else:
            digest.update(array.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()
