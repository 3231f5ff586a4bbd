"""Bookkeeping at the LAION recipe's scale: 12M index rows, metadata only (no images).

    .venv/bin/python benchmarks/bookkeeping_12m.py [--rows 12000000]

Builds a download-stage index of N rows (key, shard of 10,000, md5 with 1% planted
duplicates and 2% failed rows, a LAION-like caption of ~60 characters, url, width, height)
on disk, then times what the stages do with it, each on columns (Arrow/numpy):
  dedupe   `dedupe_file`: plan from key/status/md5, kept rows streamed to a new parquet
  caption  the `original` captioner (LAION's own text) over the kept table
  plan     encode's planning: `kept_rows` + `write_plan` (one job per shard, plan digests)
  train    the train stage's view: meta shard entries -> `rank_parts` for 8 ranks x 4 nodes
Prints seconds per step and the peak RSS of the process (the index is built by a child process).
Target: all under 2 minutes and 4 GiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.caption import CAPTIONERS  # noqa: E402
from sdlab.config import CaptionConfig  # noqa: E402
from sdlab.data.dedupe import dedupe_file  # noqa: E402
from sdlab.encode import kept_rows, write_plan  # noqa: E402
from sdlab.stream import rank_parts  # noqa: E402

WORDS = np.array(
    "a photo of the red blue cat dog house tree on in with small large painting art modern old "
    "beautiful landscape portrait sunset city street car flower garden".split()
)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_index(path: Path, rows: int, chunk: int = 1_000_000) -> None:
    """The download index, written in chunks so building it does not count against the peak."""
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        ids = np.arange(start, start + n)
        md5_ids = np.where(rng.random(n) < 0.01, rng.integers(0, max(start, 1), n), ids)  # 1% repeat an earlier image
        words = WORDS[rng.integers(0, len(WORDS), (n, 10))]
        table = pa.table(
            {
                "key": pa.array(np.char.add("laion-", ids.astype(str))),
                "url": pa.array(
                    np.char.add("https://images.example.org/photos/", np.char.add(ids.astype(str), ".jpg"))
                ),
                "caption": pa.array([" ".join(w) for w in words]),
                "width": rng.integers(512, 2048, n),
                "height": rng.integers(512, 2048, n),
                "status": pa.array(np.where(rng.random(n) < 0.02, "failed", "ok")),
                "md5": pa.array(np.char.zfill(md5_ids.astype(str), 32)),
                "shard": pa.array(np.char.add(np.char.zfill((ids // 10_000).astype(str), 5), ".tar")),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: build the index in a child process
    args = parser.parse_args()
    if args.build:
        return build_index(Path(args.build), args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--build", str(tmp / "index.parquet")], check=True
        )
        print(
            f"built a {args.rows:,}-row index in {time.perf_counter() - started:.1f} s "
            f"({(tmp / 'index.parquet').stat().st_size / 2**20:.0f} MiB on disk)"
        )
        base = peak_gib()
        times = {}

        started = time.perf_counter()
        stats = dedupe_file(tmp / "index.parquet", tmp / "kept.parquet", tmp / "duplicates.parquet", 0.01)
        times["dedupe"] = time.perf_counter() - started
        peaks = {"dedupe": peak_gib()}

        started = time.perf_counter()
        kept = pq.read_table(
            tmp / "kept.parquet",
            columns=["key", "caption", "title"]
            if "title" in pq.read_schema(tmp / "kept.parquet").names
            else ["key", "caption"],
        )
        result = CAPTIONERS["original"](kept, CaptionConfig(backend="original"), tmp, tmp)
        captions = pa.table({"key": kept["key"], "caption": pa.array(result.captions, pa.string())})
        del kept, result
        times["caption"] = time.perf_counter() - started
        peaks["caption"] = peak_gib()

        started = time.perf_counter()
        rows = kept_rows(pq.read_table(tmp / "kept.parquet", columns=["key", "shard", "split"]), captions)
        jobs = write_plan(rows, tmp / "plan.parquet")
        del captions
        times["plan"] = time.perf_counter() - started
        peaks["plan"] = peak_gib()

        started = time.perf_counter()
        counts = rows.group_by(["shard", "split"]).aggregate([("key", "count")]).to_pydict()
        per = {}
        for shard, split, n in zip(counts["shard"], counts["split"], counts["key_count"], strict=True):
            per.setdefault(shard, {"name": shard, "train": 0, "val": 0})[split] = n
        shards = list(per.values())
        parts = [rank_parts(shards, rank, 32) for rank in range(32)]
        times["train"] = time.perf_counter() - started
        peaks["train"] = peak_gib()

        total = sum(times.values())
        print(
            f"dedupe: {stats['kept']:,} kept, {stats['duplicates']:,} duplicates, {stats['failed_upstream']:,} failed"
        )
        print(f"plan: {len(jobs):,} shard jobs; train: {sum(len(p) for p in parts):,} parts over 32 ranks")
        for name, seconds in times.items():
            print(f"  {name:8s} {seconds:6.1f} s   peak RSS so far {peaks[name]:.2f} GiB")
        print(
            f"total {total:.1f} s (target < 120 s); peak RSS {peak_gib():.2f} GiB (at start: {base:.2f} GiB; "
            "target < 4 GiB)"
        )


if __name__ == "__main__":
    main()
