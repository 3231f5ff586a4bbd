"""Near-duplicate removal over image embeddings, SemDeDup-style, in flat memory at 12M rows.

The rule: every row joins its `probes` nearest k-means clusters; in each cluster, rows are taken
in index order and a row is a near-duplicate when an earlier row kept *in that cluster* lies
within cosine distance `epsilon` of it. A row is removed when it is a near-duplicate in any
cluster it is in, and names the nearest earlier row it was found beside (and the distance).
Every removed row names an earlier row, so following the names always ends at a kept row; the
first row of every group is kept, as exact dedupe keeps the first md5. The answer does not
depend on how rows are split into parts or blocks. Pairs that share none of their clusters are
never compared (SemDeDup's approximation): on the benchmark's 512-d data one probe loses ~13% of
near-copies at the cells' borders, two ~2.5% (`benchmarks/near_dupes_scale.py`); a second
probe that only asks (a visitor never kept there) halved the time but lost ~8%: not kept.

Memory: the embeddings are read part by part (one file per image shard). Pass 1 samples rows
for faiss k-means; pass 2 assigns every row to its centroids and spills it, fp16, into one of
`partitions` files on disk (once per cluster it joins); then each partition (<= `partition_bytes`
of fp16) is loaded alone and its clusters are searched a block of rows at a time (float32)
against the rows kept so far. Time is near-linear: ~N·k·d for the assignment and
~N·probes²·cluster_size·d within clusters (k = N / cluster_size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

NEAR_DUPLICATES_SCHEMA = pa.schema([("row", pa.int64()), ("duplicate_of", pa.int64()), ("distance", pa.float32())])


@dataclass(frozen=True)
class SemanticDedupe:
    """`dedupe.embedding` in params.yaml: cosine distance `epsilon`, clusters of ~`cluster_size` rows."""

    epsilon: float = 0.05
    cluster_size: int = 4096
    probes: int = 2
    kmeans_iterations: int = 20
    seed: int = 0
    partition_bytes: int = 1 << 29
    block_rows: int = 256


def normalized(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (a zero row stays zero)."""
    x = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def hash_vectors(hashes: np.ndarray) -> np.ndarray:
    """Unit float32 (N, 64) vectors (±1/8) of int64 hashes: cosine = 1 - 2 * hamming / 64."""
    bits = np.unpackbits(np.asarray(hashes, ">i8").view(np.uint8).reshape(-1, 8), axis=1)
    return (bits.astype(np.float32) * 2 - 1) / 8


def hamming_of(distance: np.ndarray) -> np.ndarray:
    """Bits that differ, from the cosine distance of two hash vectors."""
    return np.rint(np.asarray(distance) * 32).astype(np.int64)


def leaders(vectors: np.ndarray, min_similarity: float, block_rows: int = 1024) -> tuple[np.ndarray, ...]:
    """Greedy leaders of unit rows in their given order: (removed positions, the kept position each
    duplicates, its cosine similarity). Each block of rows is compared with the rows kept before it
    (one matrix product) and with itself; only rows with an earlier neighbour in their own block
    are decided one by one."""
    n = len(vectors)
    kept = np.empty(vectors.shape, np.float32)
    kept_at = np.empty(n, np.int64)
    count = 0
    removed, of, similarity = [], [], []
    for start in range(0, n, block_rows):
        block = np.asarray(vectors[start : start + block_rows], np.float32)
        best = np.full(len(block), -np.inf, np.float32)
        nearest = np.zeros(len(block), np.int64)
        if count:
            sims = block @ kept[:count].T
            nearest = sims.argmax(1)
            best = sims[np.arange(len(block)), nearest]
            nearest = kept_at[nearest]
        gone = best >= min_similarity
        inner = block @ block.T
        close = np.triu(inner >= min_similarity, 1)  # close[i, j]: i before j in this block
        stays = ~gone & ~close.any(0)
        for j in np.flatnonzero(~gone & close.any(0)):
            earlier = np.flatnonzero(close[:j, j] & stays[:j])
            if len(earlier):
                i = earlier[inner[earlier, j].argmax()]
                gone[j], nearest[j], best[j] = True, start + i, inner[i, j]
            else:
                stays[j] = True
        removed.append(start + np.flatnonzero(gone))
        of.append(nearest[gone])
        similarity.append(best[gone])
        fresh = np.flatnonzero(stays)
        kept[count : count + len(fresh)] = block[fresh]
        kept_at[count : count + len(fresh)] = start + fresh
        count += len(fresh)
    return tuple(np.concatenate(a) if a else np.empty(0) for a in (removed, of, similarity))


def _sample(parts: Sequence[Callable[[], np.ndarray]], counts: list[int], size: int) -> np.ndarray:
    """About `size` rows spread evenly over all parts (the same rows on every run)."""
    step = max(1, sum(counts) // max(size, 1))
    offset, picked = 0, []
    for read, count in zip(parts, counts, strict=True):
        first = (-offset) % step
        if first < count:
            picked.append(normalized(read()[first::step]))
        offset += count
    return np.concatenate(picked)


def _centroids(sample: np.ndarray, k: int, rule: SemanticDedupe):
    import faiss  # imported here: only the embedding layer needs it

    index = faiss.IndexFlatIP(sample.shape[1])
    if k == 1:
        index.add(sample.mean(0, keepdims=True))
        return index
    kmeans = faiss.Kmeans(
        sample.shape[1], k, niter=rule.kmeans_iterations, seed=rule.seed, spherical=True, verbose=False
    )
    kmeans.train(sample)
    index.add(kmeans.centroids)
    return index


def semantic_duplicates(
    parts: Sequence[Callable[[], np.ndarray]], counts: list[int], rule: SemanticDedupe, workdir: Path
) -> pa.Table:
    """Near-duplicates among all rows of `parts` (callables that read one part's embeddings, in
    index order; `counts[i]` rows each): a table of (row, duplicate_of, distance), rows numbered
    across parts, sorted by row. `workdir` holds the spill files (removed at the end)."""
    total = sum(counts)
    if total == 0:
        return NEAR_DUPLICATES_SCHEMA.empty_table()
    k = max(1, min(total // 39, math.ceil(total / rule.cluster_size)))  # faiss wants >= 39 points a centroid
    sample = _sample(parts, counts, k * 64)
    dim = sample.shape[1]
    index = _centroids(sample, k, rule)
    probes = min(rule.probes, k)
    partitions = max(1, min(k, math.ceil(total * probes * dim * 2 / rule.partition_bytes)))
    workdir.mkdir(parents=True, exist_ok=True)
    spills = [open(workdir / f"part-{p:05d}.f16", "wb") for p in range(partitions)]
    rows = [[] for _ in range(partitions)]
    clusters = [[] for _ in range(partitions)]
    try:
        offset = 0
        for read, count in zip(parts, counts, strict=True):
            vectors = normalized(read())
            _, assigned = index.search(vectors, probes)
            member = np.repeat(np.arange(len(vectors)), probes)
            assigned = assigned.reshape(-1)
            home = assigned % partitions
            for p in np.unique(home):
                here = home == p
                spills[p].write(vectors[member[here]].astype(np.float16).tobytes())
                rows[p].append(offset + member[here])
                clusters[p].append(assigned[here])
            offset += count
    finally:
        for spill in spills:
            spill.close()
    found = []
    for p in range(partitions):
        path = workdir / f"part-{p:05d}.f16"
        if rows[p]:
            vectors = np.fromfile(path, np.float16).reshape(-1, dim)  # fp16: a block at a time to float32
            found.append(_search_partition(vectors, np.concatenate(rows[p]), np.concatenate(clusters[p]), rule))
        path.unlink()
    removed = pa.concat_tables(found) if found else NEAR_DUPLICATES_SCHEMA.empty_table()
    return _nearest_per_row(removed)


def _nearest_per_row(removed: pa.Table) -> pa.Table:
    """One line per removed row (found in several clusters: its nearest named row), sorted by row."""
    row, of, distance = (removed[c].to_numpy() for c in ("row", "duplicate_of", "distance"))
    order = np.lexsort((of, distance, row))
    first = order[np.r_[True, np.diff(row[order]) != 0]] if len(order) else order
    return removed.take(pa.array(first, pa.int64()))


def _search_partition(vectors: np.ndarray, rows: np.ndarray, clusters: np.ndarray, rule: SemanticDedupe) -> pa.Table:
    order = np.lexsort((rows, clusters))
    bounds = np.flatnonzero(np.r_[True, np.diff(clusters[order]) != 0, True])
    removed, of, distance = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        mine = order[a:b]
        gone, nearest, similarity = leaders(vectors[mine], 1.0 - rule.epsilon, rule.block_rows)
        removed.append(rows[mine][gone.astype(np.int64)])
        of.append(rows[mine][nearest.astype(np.int64)])
        distance.append(1.0 - similarity)
    return pa.table(
        {
            "row": np.concatenate(removed).astype(np.int64),
            "duplicate_of": np.concatenate(of).astype(np.int64),
            "distance": np.clip(np.concatenate(distance), 0, 2).astype(np.float32),
        },
        schema=NEAR_DUPLICATES_SCHEMA,
    )
