"""Prepared images into webdataset shards with one index row per record: the one packer for
local files (`download.pack_local`) and fetched URLs (`fetch.collect`), and the index-row
contract both keep — every record gets a row, `ok` with its shard, md5 and size, or `failed`
with a reason."""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from sdlab.data.images import ImageRejected, PreparedImage, aspect_buckets, prepare_image
from sdlab.data.shards import shard_name, write_shard


def map_ordered(fn, items: Iterable, processes: int, chunk: int = 512) -> Iterator:
    """`fn` over `items` in order on a pool of spawned processes, `chunk` items in flight at a
    time (so a long input stream is never held whole); in this process for one process."""
    items = iter(items)
    first = list(itertools.islice(items, chunk))
    if processes <= 1 or len(first) < 64:
        yield from map(fn, itertools.chain(first, items))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        while first:
            yield from pool.imap(fn, first, chunksize=32)
            first = list(itertools.islice(items, chunk))


def prepare(data: bytes, cfg) -> PreparedImage | ImageRejected:
    """One original's training image under `cfg` (a DownloadConfig), or its rejection."""
    buckets = aspect_buckets(cfg.image_px, cfg.bucket_step, cfg.max_aspect_ratio) if cfg.fit == "bucket" else None
    try:
        return prepare_image(
            data,
            cfg.image_px,
            cfg.min_side_px,
            cfg.max_aspect_ratio,
            cfg.max_image_pixels,
            fit=cfg.fit,
            buckets=buckets,
        )
    except ImageRejected as exc:
        return exc


def failed_row(row: dict, reason: str, error: str) -> dict:
    return {
        **row,
        "shard": "",
        "md5": "",
        "width": 0,
        "height": 0,
        "bucket": "",
        "crop": [0, 0, 0, 0],
        "status": "failed",
        "reason": reason,
        "error": error,
    }


def ok_row(row: dict, image: PreparedImage, shard: str) -> dict:
    """`bucket`: the stored size; `crop`: the box of the original it shows (left, top, right, bottom)."""
    return {
        **row,
        "shard": shard,
        "md5": image.md5,
        "width": image.width,
        "height": image.height,
        "bucket": image.bucket,
        "crop": list(image.crop),
        "status": "ok",
        "reason": "",
        "error": "",
    }


def pack(
    rows: list[dict],
    outcomes: Iterable[PreparedImage | ImageRejected | dict],
    shards_dir: Path,
    shard_size: int,
    first_shard: int = 0,
    desc: str = "pack",
) -> tuple[list[dict], int]:
    """`outcomes[i]` is what became of `rows[i]`: a prepared image (packed into the current
    shard, `shard_size` images each, numbered from `first_shard`), a rejection, or an already
    failed index row. Returns (index rows in record order, shards written)."""
    index, pending, written = [], [], 0

    def flush() -> None:
        nonlocal pending, written
        if pending:
            write_shard(shards_dir / shard_name(first_shard + written), pending)
            written, pending = written + 1, []

    for row, outcome in tqdm(zip(rows, outcomes, strict=True), total=len(rows), desc=desc, unit="img"):
        if isinstance(outcome, dict):
            index.append(outcome)
            continue
        if isinstance(outcome, ImageRejected):
            index.append(failed_row(row, outcome.reason, str(outcome)))
            continue
        index.append(ok_row(row, outcome, shard_name(first_shard + written)))
        meta = {"key": row["key"], "title": row.get("title", ""), "caption": row.get("caption", "")}
        pending.append({"key": row["key"], "png": outcome.png, "json": json.dumps(meta).encode()})
        if len(pending) == shard_size:
            flush()
    flush()
    return index, written
