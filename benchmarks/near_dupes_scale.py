"""Embedding near-duplicate search at the seed's scale: time, peak memory, recall and precision.

    .venv/bin/python benchmarks/near_dupes_scale.py --rows 1000000 12000000 [--dir /tmp/nd-bench]

For each row count, writes synthetic 512-d fp16 embeddings to disk in parts of `--part-rows`
(one file per image shard, as the embedding pass writes them), streamed so the writer stays
small. They are clustered like real image embeddings are (rows drawn around `--topics`
centres, same-topic cosine ~0.5), and a `--planted` fraction of rows is a near-copy of an
earlier row (cosine 0.97-0.995 to it: a resized, re-encoded copy). Then, in a fresh child
process (so its peak RSS is the search's own), `semantic_duplicates` runs over the files with
the default rule, and the planted pairs give recall and precision (a removal is right when it
names its source or another copy of it).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 512


def write_parts(folder: Path, rows: int, part_rows: int, topics: int, planted: float, seed: int = 0) -> np.ndarray:
    """Parts on disk; returns, per row, the row it copies (-1 for an original)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIM)).astype(np.float32)
    source = np.full(rows, -1, np.int64)
    copies = np.flatnonzero(rng.random(rows) < planted)
    copies = copies[copies > 0]
    source[copies] = (rng.random(len(copies)) * copies).astype(np.int64)  # an earlier row
    source[copies] = np.where(source[source[copies]] >= 0, source[source[copies]], source[copies])  # its original
    folder.mkdir(parents=True, exist_ok=True)
    # originals are drawn from a per-row generator, so a copy can redraw its source anywhere
    for start in range(0, rows, part_rows):
        ids = np.arange(start, min(rows, start + part_rows))
        base = np.where(source[ids] >= 0, source[ids], ids)
        vectors = np.stack([_original(centres, int(b), seed) for b in base])
        jitter = np.random.default_rng([seed, 1, start]).standard_normal(vectors.shape).astype(np.float32)
        scale = np.random.default_rng([seed, 2, start]).uniform(0.1, 0.23, (len(ids), 1)).astype(np.float32)
        vectors = np.where(
            (source[ids] >= 0)[:, None],
            vectors + scale * jitter * np.linalg.norm(vectors, axis=1, keepdims=True) / np.sqrt(DIM),
            vectors,
        )
        np.save(folder / f"{start // part_rows:06d}.npy", vectors.astype(np.float16))
    return source


def _original(centres: np.ndarray, row: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0, row])
    topic = rng.integers(len(centres))
    return centres[topic] + rng.standard_normal(DIM).astype(np.float32)


def _root(source: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The original each row copies (itself for an original)."""
    return np.where(source[rows] >= 0, source[rows], rows)


def search(folder: Path, out: Path) -> None:
    """The child: the search alone, then its time and peak RSS."""
    from sdlab.data.near_dupes import SemanticDedupe, semantic_duplicates

    files = sorted(folder.glob("*.npy"))
    counts = [int(np.load(f, mmap_mode="r").shape[0]) for f in files]
    started = time.perf_counter()
    table = semantic_duplicates(
        [lambda f=f: np.load(f) for f in files], counts, SemanticDedupe(), folder.parent / "spill"
    )
    seconds = time.perf_counter() - started
    np.save(out, np.stack([table["row"].to_numpy(), table["duplicate_of"].to_numpy()]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "peak_rss_gib": peak, "removed": table.num_rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--part-rows", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=20_000)
    parser.add_argument("--planted", type=float, default=0.1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/near-dupes-bench"))
    parser.add_argument("--child", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return search(*args.child)
    print("| rows | parts | written in | search | peak RSS (search process) | removed | recall | precision |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        shutil.rmtree(args.dir, ignore_errors=True)
        started = time.perf_counter()
        source = write_parts(args.dir / "parts", rows, args.part_rows, args.topics, args.planted)
        written = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(args.dir / "parts"), str(args.dir / "found.npy")],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        found_row, found_of = np.load(args.dir / "found.npy")
        planted = source >= 0
        right = _root(source, found_row) == _root(source, found_of)
        recall = np.isin(np.flatnonzero(planted), found_row[right]).mean()
        precision = right.mean() if len(right) else 1.0
        print(
            f"| {rows:,} | {len(source) // args.part_rows} | {written:.0f} s | {result['seconds']:.0f} s "
            f"| {result['peak_rss_gib']:.2f} GiB | {result['removed']:,} | {recall:.3f} | {precision:.3f} |",
            flush=True,
        )
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
