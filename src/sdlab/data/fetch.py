"""Fetch http(s) images with img2dataset into a cache keyed by URL, and map results onto our index.

img2dataset downloads (threads x processes, or a Spark session / Ray cluster: `engines`), honours
X-Robots-Tag, and hashes the original bytes (md5). It keeps the *original* bytes here (no
re-encoding), in batches under `cache_dir/batches/<id>/`: one tar + one parquet (every URL
with `status`/`error_message`) + one `_stats.json` per shard. A batch holds only URLs no
earlier batch fetched, so a filter change, new scraped pages or a source switched away and
back fetch only new URLs, and a kill resumes the unfinished batch's missing shards. `collect`
then validates and resizes each record's cached original with the same code as local files
(`packing.prepare`: `image_px`, `fit`, `min_side_px`, `max_aspect_ratio`, `max_image_pixels`), so a
change of those fetches nothing. Failed URLs are cached with their reason too.

img2dataset fetches through `public_http` (see `img2dataset_public`): public addresses only,
checked at every redirect, bodies bounded by `max_bytes` and `deadline_s`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.config import DownloadConfig
from sdlab.data.engines import engine
from sdlab.data.packing import failed_row, map_ordered, pack, prepare
from sdlab.data.records import DataError
from sdlab.data.shards import read_shard
from sdlab.io import write_table
from sdlab.public_http import SCHEMES, FetchPolicy, network_policy

# img2dataset's error_message -> our reason, first match wins.
REASONS: tuple[tuple[str, str], ...] = (
    (r"^(blocked_address|unsupported_scheme|too_many_redirects|too_large|timeout|bad_url|connection_error):", "{0}"),
    (r"HTTP Error (\d{3})", "http_{0}"),
    (r"timed out", "timeout"),
    (r"X-Robots-Tag", "robots_disallowed"),
    (r"image too small", "too_small"),
    (r"image area too large", "too_large"),
    (r"aspect ratio too large", "bad_aspect_ratio"),
    (r"decoding error|imdecode|Image decoding", "decode_error"),
    (r"Connection refused|Name or service not known|No address|getaddrinfo|urlopen error", "connection_error"),
    (r"IncompleteRead|RemoteDisconnected|Connection reset|ContentTooShort", "incomplete_response"),
)


def reason_of(error_message: str) -> str:
    """Short, countable reason for one of img2dataset's error messages."""
    for pattern, reason in REASONS:
        match = re.search(pattern, error_message or "", flags=re.IGNORECASE)
        if match:
            return reason.format(*match.groups())
    return "download_error"


def is_fetchable(url: str) -> bool:
    """Only http(s) leaves this machine: file://, ftp:// and the rest are refused."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in SCHEMES and bool(parts.netloc)


def fetch_policy(cfg: DownloadConfig) -> FetchPolicy:
    allow_all, allowed = network_policy(cfg.allow_private_networks)
    return FetchPolicy(
        allow_private_networks=allow_all,
        allowed_networks=allowed,
        max_bytes=cfg.max_bytes,
        timeout_s=cfg.timeout_s,
        deadline_s=cfg.deadline_s,
    )


def batch_id(urls: list[str]) -> str:
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


def run_img2dataset(url_list: Path, output: Path, cfg: DownloadConfig) -> None:
    """img2dataset over `url_list` (parquet: url) into `output`, keeping original bytes and
    resuming finished shards. Call from under `if __name__ == "__main__":` (spawned workers)."""
    from sdlab.data.img2dataset_public import download, public_fetches

    with public_fetches(fetch_policy(cfg)):
        download(
            url_list=str(url_list),
            input_format="parquet",
            url_col="url",
            output_folder=str(output),
            output_format="webdataset",
            disable_all_reencoding=True,
            compute_hash="md5",
            extract_exif=False,
            processes_count=cfg.processes,
            thread_count=cfg.threads,
            timeout=cfg.timeout_s,
            retries=cfg.retries,
            distributor=cfg.distributor,
            number_sample_per_shard=cfg.shard_size,
            incremental_mode="incremental",
            user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
        )


def batch_complete(batch: Path) -> bool:
    """True once every shard of the batch has its stats file (img2dataset's own marker)."""
    urls = pq.read_metadata(batch / "urls.parquet").num_rows
    shard_size = json.loads((batch / "batch.json").read_text())["shard_size"]
    return all(
        (batch / "shards" / f"{i:05d}_stats.json").exists() for i in range((urls + shard_size - 1) // shard_size)
    )


def cached_results(cache_dir: Path) -> pa.Table:
    """url -> batch, shard, sample key, status, error, md5 of every finished batch."""
    parts = []
    for batch in sorted((cache_dir / "batches").glob("*")) if (cache_dir / "batches").is_dir() else []:
        if not (batch / "batch.json").exists() or not batch_complete(batch):
            continue
        for result in sorted((batch / "shards").glob("[0-9]*.parquet")):
            table = pq.read_table(result, columns=["url", "key", "status", "error_message", "md5"])
            parts.append(
                table.append_column("batch", pa.repeat(batch.name, table.num_rows)).append_column(
                    "shard", pa.repeat(result.stem, table.num_rows)
                )
            )
    schema = pa.schema(
        [
            ("url", pa.string()),
            ("key", pa.string()),
            ("status", pa.string()),
            ("error_message", pa.string()),
            ("md5", pa.string()),
            ("batch", pa.string()),
            ("shard", pa.string()),
        ]
    )
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def fetch(records: pa.Table, cfg: DownloadConfig, cache_dir: Path) -> pa.Table:
    """Fetch the URLs of `records` that no finished batch holds (resuming an unfinished batch
    first) on the engine `cfg` names; return the cached result of every URL."""
    batches = cache_dir / "batches"
    unfinished = [b for b in sorted(batches.glob("*")) if (b / "batch.json").exists() and not batch_complete(b)]
    known = cached_results(cache_dir)
    pending = pa.concat_arrays(
        [known["url"].combine_chunks().cast(pa.string())]
        + [pq.read_table(b / "urls.parquet")["url"].combine_chunks().cast(pa.string()) for b in unfinished]
    )
    wanted = pc.unique(records["url"].combine_chunks())
    new = pc.filter(wanted, pc.invert(pc.is_in(wanted, pending))).to_pylist()
    if new:
        batch = batches / batch_id(new)
        write_table(batch / "urls.parquet", pa.table({"url": new}))
        (batch / "batch.json").write_text(json.dumps({"shard_size": cfg.shard_size, "urls": len(new)}))
        unfinished.append(batch)
    if not unfinished:
        return known
    with engine(cfg):  # one Spark session / Ray connection for every batch
        for batch in unfinished:  # a killed run's batch first: img2dataset fetches only its missing shards
            for _ in range(2):  # a second pass for shards that failed (ray's distributor never retries)
                run_img2dataset(batch / "urls.parquet", batch / "shards", cfg)
                if batch_complete(batch):
                    break
            else:
                raise DataError(f"download: img2dataset did not finish {batch}; rerun the stage to fetch the rest")
    return cached_results(cache_dir)


def collect(
    records: pa.Table, results: pa.Table, cache_dir: Path, shards_dir: Path, cfg: DownloadConfig, first_shard: int = 0
) -> tuple[list[dict], int]:
    """Index rows of `records` (order kept) from the cached results, and our shards (`<key>.png`
    + `<key>.json`, in record order) from the cached originals. Returns (rows, shards written)."""
    position = {url: i for i, url in enumerate(results["url"].to_pylist())}
    located = results.to_pylist()
    rows = records.to_pylist()
    missing = [row["url"] for row in rows if row["url"] not in position]
    if missing:
        raise DataError(f"download: no cached result for {len(missing)} URL(s), e.g. {missing[0]!r}")

    def originals():
        """Original bytes of each ok record, reading each cached shard once, in record order."""
        tars: dict[tuple[str, str], dict] = {}
        for row in rows:
            hit = located[position[row["url"]]]
            if hit["status"] != "success":
                continue
            where = (hit["batch"], hit["shard"])
            if where not in tars:
                tars.clear()  # records of one batch shard usually come together: keep one open
                tars[where] = read_shard(cache_dir / "batches" / hit["batch"] / "shards" / f"{hit['shard']}.tar")
            sample = tars[where].get(hit["key"], {})
            yield next((v for k, v in sample.items() if k not in ("json", "txt")), b"")

    prepared = map_ordered(functools.partial(prepare, cfg=cfg), originals(), cfg.processes)

    def outcomes():
        """Per record in order: its prepared image or rejection, or the failed row of a URL
        img2dataset could not fetch."""
        for row in rows:
            hit = located[position[row["url"]]]
            if hit["status"] == "success":
                yield next(prepared)
            else:
                error = hit["error_message"] or "not downloaded"
                yield failed_row(row, reason_of(error), error)

    return pack(rows, outcomes(), shards_dir, cfg.shard_size, first_shard, desc="collect")
