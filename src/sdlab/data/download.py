"""Pack local images into webdataset shards with an index row for every record.

Reader -> mapper -> writer: records are read in order, each is prepared in a worker
process (validate, composite on white, fit to `image_px`), and the ok ones are written
to shards of `shard_size`. A record that fails keeps its row with status `failed` and a
reason, so rows in the index always equal rows in the filtered records.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections import Counter
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from sdlab.config import DownloadConfig
from sdlab.data.images import ImageRejected, PreparedImage, prepare_image
from sdlab.data.shards import shard_name, write_shard

INDEX_COLUMNS = ("key", "shard", "md5", "width", "height", "status", "reason")


def prepare_local(path: str, cfg: DownloadConfig) -> PreparedImage | ImageRejected:
    """Mapper: one local file -> prepared image, or the rejection with its reason."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ImageRejected("missing_file", path)
    except OSError as exc:
        return ImageRejected("unreadable_file", f"{path}: {exc}")
    try:
        return prepare_image(data, cfg.image_px, cfg.min_side_px, cfg.max_aspect_ratio)
    except ImageRejected as exc:
        return exc


def _map_ordered(fn, items: list, processes: int):
    if processes <= 1 or len(items) < 64:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        yield from pool.imap(fn, items, chunksize=32)


def pack_local(records: pa.Table, cfg: DownloadConfig, shards_dir: Path) -> tuple[pa.Table, dict]:
    """Write shards for `records` (which have a `path`) and return (index, stats)."""
    rows = records.to_pylist()
    mapper = functools.partial(prepare_local, cfg=cfg)
    results = _map_ordered(mapper, [row["path"] for row in rows], cfg.processes)
    index, pending, shard_count = [], [], 0

    def flush() -> None:
        nonlocal pending, shard_count
        if pending:
            write_shard(shards_dir / shard_name(shard_count), pending)
            shard_count, pending = shard_count + 1, []

    for row, result in tqdm(zip(rows, results), total=len(rows), desc="download", unit="img"):
        if isinstance(result, ImageRejected):
            index.append({**row, "shard": "", "md5": "", "width": 0, "height": 0,
                          "status": "failed", "reason": result.reason, "error": str(result)})
            continue
        index.append({**row, "shard": shard_name(shard_count), "md5": result.md5,
                      "width": result.width, "height": result.height,
                      "status": "ok", "reason": "", "error": ""})
        meta = {"key": row["key"], "title": row.get("title", ""), "caption": row.get("caption", "")}
        pending.append({"key": row["key"], "png": result.png, "json": json.dumps(meta).encode()})
        if len(pending) == cfg.shard_size:
            flush()
    flush()
    table = pa.Table.from_pylist(index)
    reasons = Counter(r["reason"] for r in index if r["status"] == "failed")
    stats = {"input": len(rows), "ok": len(rows) - sum(reasons.values()),
             "failed": sum(reasons.values()), "failed_by_reason": dict(sorted(reasons.items())),
             "shards": shard_count}
    return table, stats
