"""Fetch http(s) images with img2dataset and map its per-URL results onto our index.

img2dataset downloads (threads x processes, or a pyspark/ray cluster), validates, composites
alpha on white, resizes and hashes the original bytes (md5). It writes one tar + one
parquet (every URL with `status`/`error_message`) + one `_stats.json` per shard into a
persisted cache folder, so a rerun after a kill fetches only the shards that never finished.
`collect` then rewrites its shards into ours (`<key>.png` + `<key>.json`, samples in
record order) and gives every record its index row with a short counted reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sdlab.config import DownloadConfig
from sdlab.data.records import DataError
from sdlab.data.shards import read_shard, shard_name, write_shard
from sdlab.io import write_table

FETCHED_SCHEMES = ("http", "https")
KEY_COLUMN = "record_key"  # img2dataset has its own `key`

# img2dataset's error_message -> our reason, first match wins.
REASONS: tuple[tuple[str, str], ...] = (
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
    return parts.scheme.lower() in FETCHED_SCHEMES and bool(parts.netloc)


def fetch_fingerprint(keys: list[str], urls: list[str], cfg: DownloadConfig) -> str:
    """Identity of a download: the URL list and every param that changes what a shard holds."""
    digest = hashlib.sha256()
    for key, url in zip(keys, urls):
        digest.update(f"{key}\t{url}\n".encode())
    settings = (cfg.image_px, cfg.shard_size, cfg.min_side_px, cfg.max_aspect_ratio, cfg.max_image_pixels)
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()[:16]


def run_img2dataset(url_list: Path, output: Path, cfg: DownloadConfig) -> None:
    """img2dataset over `url_list` (parquet: url, record_key) into `output`, resuming finished shards.

    Call from under `if __name__ == "__main__":`: its workers are spawned."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # cv2 refuses to even decode beyond this, so a bomb never allocates more than 4x the limit
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(4 * cfg.max_image_pixels)
    from img2dataset import download

    download(
        url_list=str(url_list), input_format="parquet", url_col="url",
        save_additional_columns=[KEY_COLUMN], output_folder=str(output), output_format="webdataset",
        image_size=cfg.image_px, resize_mode="border", encode_format="png", encode_quality=9,
        min_image_size=cfg.min_side_px, max_aspect_ratio=cfg.max_aspect_ratio,
        max_image_area=cfg.max_image_pixels, compute_hash="md5", extract_exif=False,
        processes_count=cfg.processes, thread_count=cfg.threads, timeout=cfg.timeout_s,
        retries=cfg.retries, distributor=cfg.distributor, number_sample_per_shard=cfg.shard_size,
        incremental_mode="incremental", user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
    )


def fetch(records: pa.Table, cfg: DownloadConfig, cache_dir: Path) -> Path:
    """Download `records` (key, url: all fetchable) into `cache_dir/<fingerprint>/`; return it.

    Folders of other fingerprints (an older URL list or other settings) are removed."""
    keys, urls = records.column("key").to_pylist(), records.column("url").to_pylist()
    run_dir = cache_dir / fetch_fingerprint(keys, urls, cfg)
    if cache_dir.exists():
        for other in cache_dir.iterdir():
            if other != run_dir:
                shutil.rmtree(other) if other.is_dir() else other.unlink()
    url_list = run_dir / "urls.parquet"
    if not url_list.exists():
        write_table(url_list, pa.table({"url": urls, KEY_COLUMN: keys}))
    run_img2dataset(url_list, run_dir / "shards", cfg)
    return run_dir


def expected_shards(num_records: int, shard_size: int) -> list[int]:
    return list(range((num_records + shard_size - 1) // shard_size))


def collect(records: pa.Table, run_dir: Path, shards_dir: Path, shard_size: int,
            first_shard: int = 0) -> tuple[list[dict], int]:
    """Index rows of `records` (order kept) from img2dataset's output; our shards from its shards.

    Returns (rows, number of shards written)."""
    source = run_dir / "shards"
    rows_by_key = {row["key"]: row for row in records.to_pylist()}
    index: dict[str, dict] = {}
    written = 0
    for shard_id in tqdm(expected_shards(records.num_rows, shard_size), desc="collect", unit="shard"):
        stem = source / f"{shard_id:05d}"
        if not Path(f"{stem}_stats.json").exists():
            raise DataError(f"download: img2dataset did not finish shard {shard_id} in {source}; "
                            "rerun the stage to fetch the missing shards")
        results = pq.read_table(f"{stem}.parquet").to_pylist()
        samples = read_shard(f"{stem}.tar") if Path(f"{stem}.tar").exists() else {}
        ours, name = [], shard_name(first_shard + written)
        for result in sorted(results, key=lambda r: r["key"]):
            key = result[KEY_COLUMN]
            row = rows_by_key[key]
            if result["status"] == "success" and result["key"] in samples:
                image = samples[result["key"]]
                meta = {"key": key, "title": row.get("title", ""), "caption": row.get("caption", "")}
                ours.append({"key": key, "png": image["png"], "json": json.dumps(meta).encode()})
                index[key] = {**row, "shard": name, "md5": result["md5"] or "",
                              "width": result["original_width"] or 0, "height": result["original_height"] or 0,
                              "status": "ok", "reason": "", "error": ""}
            else:
                error = result["error_message"] or "missing from the shard"
                index[key] = failed_row(row, reason_of(error), error)
        if ours:
            write_shard(shards_dir / name, ours)
            written += 1
    missing = [key for key in rows_by_key if key not in index]
    if missing:
        raise DataError(f"download: img2dataset returned no result for {len(missing)} record(s), e.g. {missing[0]!r}")
    return [index[key] for key in rows_by_key], written


def failed_row(row: dict, reason: str, error: str) -> dict:
    return {**row, "shard": "", "md5": "", "width": 0, "height": 0, "status": "failed", "reason": reason, "error": error}
