"""Exact dedupe by MD5 of the original bytes, and a stable train/val split.

The split hashes a column (`key` by default; rows with one value in `split_column` share a
split, e.g. one concept drawn in one style), and may hold out whole groups (`unseen_column`:
a fraction of its values goes to val entirely, e.g. concepts the model never sees in training).

Columnar throughout (Arrow + numpy): the plan reads only `key`, `status` and `md5`, and the
kept rows are streamed from the index in batches, so 12M rows fit in a few GiB.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.data.records import DataError
from sdlab.io import atomic_path, require_table

# (positions of md5-kept rows in the index) -> (which of them stay, counts by reason)
Curate = Callable[[np.ndarray], tuple[np.ndarray, dict]]
DUPLICATES_SCHEMA = pa.schema([("key", pa.string()), ("md5", pa.string()), ("duplicate_of", pa.string())])


def split_for_key(key: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of keys (by hash, so adding data moves nobody)."""
    return "val" if _bucket(key) < val_fraction else "train"


def _bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def splits_for_keys(keys: pa.Array, val_fraction: float, chunk: int = 1 << 20) -> pa.Array:
    """`split_for_key` over a column, a chunk of keys at a time (no list of every key in memory)."""
    return pc.if_else(pa.array(hashed_below(keys, val_fraction, chunk)), "val", "train")


UNSEEN_SALT = "unseen:"  # the group hold-out hashes other bits than the split (independent draws)


def hashed_below(values: pa.Array, fraction: float, chunk: int = 1 << 20, salt: str = "") -> np.ndarray:
    """Per value, whether its stable hash falls below `fraction` (equal values, equal answers)."""
    out = np.empty(len(values), bool)
    for start in range(0, len(values), chunk):
        part = values.slice(start, chunk).cast(pa.string()).to_pylist()
        digests = b"".join(hashlib.sha1((salt + (v or "")).encode()).digest()[:8] for v in part)
        out[start : start + len(part)] = np.frombuffer(digests, dtype=">u8") / 2**64 < fraction
    return out


def plan_splits(
    split_by: pa.Array, val_fraction: float, unseen_by: pa.Array | None = None, unseen_fraction: float = 0.0
) -> tuple[pa.Array, int]:
    """(train/val per row, how many rows are val because their group is held out whole)."""
    is_val = hashed_below(split_by, val_fraction)
    unseen = np.zeros(len(split_by), bool)
    if unseen_by is not None and unseen_fraction > 0:
        unseen = hashed_below(unseen_by, unseen_fraction, salt=UNSEEN_SALT)
    return pc.if_else(pa.array(is_val | unseen), "val", "train"), int(unseen.sum())


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _hex_words(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(high, low) uint64 of 32-character hex digests, read from Arrow's buffer; None if not all are."""
    chunk = chunk.cast(pa.string())
    if chunk.null_count or (len(chunk) and not pc.all(pc.equal(pc.utf8_length(chunk), 32)).as_py()):
        return None
    _, offsets, data = chunk.buffers()
    start = int(np.frombuffer(offsets, np.int32)[chunk.offset]) if len(chunk) else 0
    nibbles = _HEX[np.frombuffer(data, np.uint8, count=32 * len(chunk), offset=start).reshape(-1, 32)]
    if (nibbles == 255).any():
        return None
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    words = [
        (nibbles[:, half * 16 : (half + 1) * 16].astype(np.uint64) << shifts).sum(1, dtype=np.uint64) for half in (0, 1)
    ]
    return words[0], words[1]


def _md5_codes(md5: pa.Array | pa.ChunkedArray, chunk_rows: int = 1 << 20) -> np.ndarray:
    """An integer per distinct md5, equal codes for equal digests. Hex digests become two
    uint64 words a chunk at a time and are sorted (no hash table, no Python string per row)."""
    chunks = md5.chunks if isinstance(md5, pa.ChunkedArray) else [md5]
    words = [_hex_words(c.slice(i, chunk_rows)) for c in chunks for i in range(0, len(c), chunk_rows)]
    if not words or any(w is None for w in words):
        return (
            pc.dictionary_encode(md5).combine_chunks().indices.to_numpy().astype(np.int64)
            if isinstance(md5, pa.ChunkedArray)
            else pc.dictionary_encode(md5).indices.to_numpy().astype(np.int64)
        )
    high, low = np.concatenate([w[0] for w in words]), np.concatenate([w[1] for w in words])
    order = np.lexsort((low, high))
    new_group = np.r_[True, (np.diff(high[order]) != 0) | (np.diff(low[order]) != 0)]
    codes = np.empty(len(order), np.int64)
    codes[order] = np.cumsum(new_group) - 1
    return codes


def dedupe_plan(
    keys: pa.ChunkedArray,
    status: pa.ChunkedArray,
    md5: pa.ChunkedArray,
    val_fraction: float,
    *,
    split_by: pa.ChunkedArray | None = None,
    unseen_by: pa.ChunkedArray | None = None,
    unseen_fraction: float = 0.0,
    curate: Curate | None = None,
) -> tuple[np.ndarray, pa.Array, pa.Table, dict]:
    """(positions of kept rows in the index, their splits, the duplicates table, stats): the
    first ok row of each md5 (index order) is kept, then `curate` (near-duplicates, scores) may
    drop more of them. `split_by` (default: the keys) decides the split; `unseen_by` values
    below `unseen_fraction` put their whole group in val."""
    ok = np.flatnonzero(pc.equal(status, "ok").to_numpy(zero_copy_only=False))
    codes = _md5_codes(md5.take(pa.array(ok)))
    _, first = np.unique(codes, return_index=True)  # first occurrence of each md5 among ok rows
    is_first = np.zeros(len(ok), bool)
    is_first[first] = True
    first_of_code = np.empty(len(first), np.int64)
    first_of_code[codes[first]] = ok[first]
    kept = ok[is_first]
    repeated = ok[~is_first]
    curated: dict = {}
    if curate is not None:
        survives, curated = curate(kept)
        kept = kept[survives]
    duplicates = pa.table(
        {
            "key": keys.take(pa.array(repeated)),
            "md5": md5.take(pa.array(repeated)),
            "duplicate_of": keys.take(pa.array(first_of_code[codes[~is_first]])),
        },
        schema=DUPLICATES_SCHEMA,
    )
    taken = pa.array(kept, pa.int64())
    splits, unseen = plan_splits(
        (keys if split_by is None else split_by).take(taken),
        val_fraction,
        None if unseen_by is None else unseen_by.take(taken),
        unseen_fraction,
    )
    val = int(pc.sum(pc.equal(splits, "val")).as_py() or 0)
    stats = {
        "input": len(keys),
        "failed_upstream": len(keys) - len(ok),
        "duplicates": len(repeated),
        **curated,
        "kept": len(kept),
        "train": len(kept) - val,
        "val": val,
    }
    if unseen_by is not None:
        stats["val_unseen_group"] = unseen  # val rows whose whole group (e.g. concept) is held out
    return kept, splits, duplicates, stats


@dataclass(frozen=True)
class SplitRule:
    """How kept rows are split (`dedupe` in params.yaml): see the module's docstring."""

    val_fraction: float
    split_column: str = "key"
    unseen_column: str | None = None
    unseen_fraction: float = 0.0

    def columns(self, available: list[str], where: str) -> list[str]:
        """The index columns the rule reads, each checked to exist (the error names the key)."""
        for name, column in (("split_column", self.split_column), ("unseen_column", self.unseen_column)):
            if column is not None and column not in available:
                raise DataError(f"dedupe.{name}: {where} has no column {column!r} (it has {sorted(available)})")
        return [c for c in (self.split_column, self.unseen_column) if c is not None]

    def plan(self, table: pa.Table, curate: Curate | None = None) -> tuple[np.ndarray, pa.Array, pa.Table, dict]:
        return dedupe_plan(
            *(table[c] for c in ("key", "status", "md5")),
            self.val_fraction,
            split_by=table[self.split_column],
            unseen_by=None if self.unseen_column is None else table[self.unseen_column],
            unseen_fraction=self.unseen_fraction,
            curate=curate,
        )


def dedupe(index: pa.Table, rule: SplitRule | float) -> tuple[pa.Table, pa.Table, dict]:
    """Keep the first ok row of each md5 (index order); return (kept, duplicates, stats)."""
    rule = rule if isinstance(rule, SplitRule) else SplitRule(rule)
    rule.columns(index.column_names, "the index")
    kept, splits, duplicates, stats = rule.plan(index.combine_chunks())
    return index.take(pa.array(kept, pa.int64())).append_column("split", splits), duplicates, stats


def dedupe_file(
    index_path: Path,
    kept_path: Path,
    duplicates_path: Path,
    rule: SplitRule | float,
    batch_rows: int = 262_144,
    curation: Callable[[pa.ChunkedArray, np.ndarray], tuple[np.ndarray, dict]] | None = None,
) -> dict:
    """`dedupe` from one parquet file to another, streaming the index's wide columns in batches.
    `curation(keys, md5-kept positions)` may drop more rows (`sdlab.data.curation.Curation`)."""
    rule = rule if isinstance(rule, SplitRule) else SplitRule(rule)
    parquet = pq.ParquetFile(require_table(index_path))
    read = list(dict.fromkeys(["key", "status", "md5", *rule.columns(parquet.schema_arrow.names, str(index_path))]))
    table = pq.read_table(index_path, columns=read)
    curate = None if curation is None else functools.partial(curation, table["key"])
    kept, splits, duplicates, stats = rule.plan(table, curate)
    scores = getattr(curation, "columns", {})  # e.g. embed_clip_score, embed_aesthetic of each kept row
    schema = parquet.schema_arrow.append(pa.field("split", pa.string()))
    for name in scores:
        schema = schema.append(pa.field(name, pa.float32()))
    with atomic_path(kept_path) as temp, pq.ParquetWriter(temp, schema) as writer:
        start, taken = 0, 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            mine = kept[(kept >= start) & (kept < start + batch.num_rows)] - start
            part = pa.Table.from_batches([batch]).take(pa.array(mine, pa.int64()))
            part = part.append_column("split", splits.slice(taken, len(mine)))
            for name, values in scores.items():
                part = part.append_column(name, pa.array(values[taken : taken + len(mine)], pa.float32()))
            writer.write_table(part.cast(schema))
            start, taken = start + batch.num_rows, taken + len(mine)
    with atomic_path(duplicates_path) as temp:
        pq.write_table(duplicates, temp)
    return stats
