"""LAION metadata at scale: `scrape` (laion source) and `filter` (the high-quality recipe)
over N synthetic metadata rows, each stage timed as DVC runs it, with its peak memory.

    .venv/bin/python benchmarks/filter_laion_rows.py [--rows 10000000]

The metadata has LAION-400M's columns (URL, TEXT, WIDTH, HEIGHT, similarity, punsafe,
pwatermark, AESTHETIC_SCORE, plus SAMPLE_ID/LICENSE/NSFW the mapping leaves out) with
varied values, written in row groups of 256k rows. Peak memory is the stage process's
resident set, sampled every 20 ms. Target (issue): filter 10M rows in < 60 s, < 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from sdlab.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1_000_000


def write_metadata(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = np.array(
        "a photo of the cat dog red blue old new small large house tree car art painting "
        "portrait landscape city night beach vintage modern abstract colorful".split()
    )
    vocabulary = pa.array([" ".join(rng.choice(words, rng.integers(2, 60))) for _ in range(5000)])
    with pq.ParquetWriter(
        path,
        pa.schema(
            [
                ("SAMPLE_ID", pa.int64()),
                ("URL", pa.string()),
                ("TEXT", pa.string()),
                ("HEIGHT", pa.float64()),
                ("WIDTH", pa.float64()),
                ("LICENSE", pa.string()),
                ("NSFW", pa.string()),
                ("similarity", pa.float64()),
                ("punsafe", pa.float64()),
                ("pwatermark", pa.float64()),
                ("AESTHETIC_SCORE", pa.float64()),
            ]
        ),
    ) as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            ids = pa.array(np.arange(start, start + n))
            url = pc.binary_join_element_wise(
                "https://img",
                pc.cast(pa.array(rng.integers(0, 997, n)), pa.string()),
                ".example.com/",
                pc.cast(ids, pa.string()),
                ".jpg",
                "",
            )
            table = pa.table(
                {
                    "SAMPLE_ID": ids,
                    "URL": url,
                    "TEXT": vocabulary.take(pa.array(rng.integers(0, len(vocabulary), n))),
                    "HEIGHT": rng.integers(32, 4096, n).astype(float),
                    "WIDTH": rng.integers(32, 4096, n).astype(float),
                    "LICENSE": pa.array(["?"] * n),
                    "NSFW": pa.array(["UNLIKELY"] * n),
                    "similarity": rng.uniform(0.2, 0.45, n),
                    "punsafe": rng.beta(1, 8, n),
                    "pwatermark": rng.beta(1, 4, n),
                    "AESTHETIC_SCORE": rng.normal(5.5, 0.8, n),
                }
            )
            writer.write_table(table, row_group_size=262_144)


def run_measured(command: list[str], cwd: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one stage process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdlab-laion-bench-"))
    try:
        started = time.perf_counter()
        write_metadata(work / "metadata.parquet", args.rows)
        print(
            f"metadata: {args.rows:,} rows, {(work / 'metadata.parquet').stat().st_size / 2**20:.0f} MiB "
            f"written in {time.perf_counter() - started:.0f} s"
        )
        params = load_profile("laion", REPO).composed  # configs/laion.yaml over params.yaml
        params["scrape"]["laion"]["metadata"] = str(work / "metadata.parquet")
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        python = sys.executable
        scrape_s, scrape_peak = run_measured(
            [
                python,
                str(REPO / "stages" / "scrape.py"),
                "--params",
                "params.yaml",
                "--out",
                "raw",
                "--state",
                "state",
                "--report",
                "r-scrape",
            ],
            work,
        )
        filter_s, filter_peak = run_measured(
            [
                python,
                str(REPO / "stages" / "filter.py"),
                "--params",
                "params.yaml",
                "--records",
                "raw/records.parquet",
                "--out",
                "filtered",
                "--report",
                "r-filter",
            ],
            work,
        )
        stats = json.loads((work / "r-filter" / "stats.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib = 2**30
    print(
        f"scrape (laion -> records): {scrape_s:.1f} s, {args.rows / scrape_s / 1e6:.2f} M rows/s, "
        f"peak {scrape_peak / gib:.2f} GiB"
    )
    print(
        f"filter (laion recipe):     {filter_s:.1f} s, {args.rows / filter_s / 1e6:.2f} M rows/s, "
        f"peak {filter_peak / gib:.2f} GiB  (target < 60 s, < 2 GiB)"
    )
    print(f"kept {stats['kept']:,} of {stats['input']:,}: {stats['dropped_by_reason']}")


if __name__ == "__main__":
    main()
