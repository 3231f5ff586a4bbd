"""Exact dedupe by MD5 of the original bytes, and a stable train/val split."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc


def split_for_key(key: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of keys (by hash, so adding data moves nobody)."""
    bucket = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def dedupe(index: pa.Table, val_fraction: float) -> tuple[pa.Table, pa.Table, dict]:
    """Keep the first ok row of each md5 (index order); return (kept, duplicates, stats)."""
    ok = index.filter(pc.equal(index.column("status"), "ok"))
    first_key: dict[str, str] = {}
    keep, duplicate_rows = [], []
    for position, (key, md5) in enumerate(zip(ok.column("key").to_pylist(), ok.column("md5").to_pylist())):
        if md5 in first_key:
            duplicate_rows.append({"key": key, "md5": md5, "duplicate_of": first_key[md5]})
        else:
            first_key[md5] = key
            keep.append(position)
    kept = ok.take(pa.array(keep, pa.int64()))
    splits = [split_for_key(key, val_fraction) for key in kept.column("key").to_pylist()]
    kept = kept.append_column("split", pa.array(splits, pa.string()))
    schema = pa.schema([("key", pa.string()), ("md5", pa.string()), ("duplicate_of", pa.string())])
    duplicates = pa.Table.from_pylist(duplicate_rows, schema=schema)
    stats = {"input": index.num_rows, "failed_upstream": index.num_rows - ok.num_rows,
             "duplicates": len(duplicate_rows), "kept": kept.num_rows,
             "train": splits.count("train"), "val": splits.count("val")}
    return kept, duplicates, stats
