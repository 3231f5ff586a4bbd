"""Images of every record into webdataset shards, with an index row for every record.

Local files: reader -> mapper -> writer; records are read in order, each is prepared in a
worker process (validate, composite on white, fit to `image_px` by `fit`), and the ok ones are
written to shards of `shard_size`. http(s) URLs: img2dataset into a per-URL cache of
originals, then the same preparation (see `fetch`). A record that
fails keeps its row with status `failed` and a reason, so rows in the index always equal
rows in the filtered records.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sdlab.config import DownloadConfig
from sdlab.data.fetch import collect, fetch, is_fetchable
from sdlab.data.images import ImageRejected, PreparedImage
from sdlab.data.packing import failed_row, map_ordered, pack, prepare


def prepare_local(path: str, cfg: DownloadConfig) -> PreparedImage | ImageRejected:
    """Mapper: one local file -> prepared image, or the rejection with its reason."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ImageRejected("missing_file", path)
    except OSError as exc:
        return ImageRejected("unreadable_file", f"{path}: {exc}")
    return prepare(data, cfg)


def pack_local(
    records: pa.Table, cfg: DownloadConfig, shards_dir: Path, first_shard: int = 0
) -> tuple[list[dict], int]:
    """Shards for `records` that have a local `path`: (index rows in record order, shards written)."""
    rows = records.to_pylist()
    mapper = functools.partial(prepare_local, cfg=cfg)
    prepared = map_ordered(mapper, (row["path"] for row in rows), cfg.processes)
    return pack(rows, prepared, shards_dir, cfg.shard_size, first_shard, desc="pack")


def location_kinds(records: pa.Table) -> list[str]:
    """`local` (a path), `remote` (an http(s) URL) or `unsupported` (any other URL), per record."""
    paths = records.column("path").to_pylist() if "path" in records.column_names else [""] * records.num_rows
    urls = records.column("url").to_pylist() if "url" in records.column_names else [""] * records.num_rows
    return [
        "local" if path else "remote" if is_fetchable(url or "") else "unsupported"
        for path, url in zip(paths, urls, strict=True)
    ]


def summarize(rows: list[dict], shards: int) -> dict:
    reasons = Counter(r["reason"] for r in rows if r["status"] == "failed")
    failed = sum(reasons.values())
    return {
        "input": len(rows),
        "ok": len(rows) - failed,
        "failed": failed,
        "failed_by_reason": dict(sorted(reasons.items())),
        "shards": shards,
    }


def download(
    records: pa.Table, cfg: DownloadConfig, shards_dir: Path, cache_dir: Path | None = None
) -> tuple[pa.Table, dict]:
    """Every record into the index: local files packed, http(s) URLs fetched with img2dataset
    (resumable through `cache_dir`), other schemes failed as `unsupported_scheme`."""
    kinds = pa.array(location_kinds(records))
    local = records.filter(pc.equal(kinds, "local"))
    remote = records.filter(pc.equal(kinds, "remote"))
    rows, shards = pack_local(local, cfg, shards_dir) if local.num_rows else ([], 0)
    if remote.num_rows:  # the cache is never cleared here: a source switched away and back fetches nothing
        if cache_dir is None:
            raise ValueError("download: http(s) records need a cache folder")
        results = fetch(remote, cfg, cache_dir)
        fetched, count = collect(remote, results, cache_dir, shards_dir, cfg, first_shard=shards)
        rows, shards = rows + fetched, shards + count
    for row in records.filter(pc.equal(kinds, "unsupported")).to_pylist():
        rows.append(failed_row(row, "unsupported_scheme", f"only http(s) URLs are fetched: {row.get('url')!r}"))
    order = {key: i for i, key in enumerate(records.column("key").to_pylist())}
    rows.sort(key=lambda row: order[row["key"]])
    return pa.Table.from_pylist(rows), summarize(rows, shards)
