"""What `dedupe` drops after exact md5 duplicates, from the embed stage's files: rows whose
image-caption CLIP score is under `dedupe.min_clip_score`, whose aesthetic score is under
`dedupe.min_aesthetic`, whose NSFW probability is over `dedupe.max_nsfw`, whose watermark
probability (scored in the embed pass) is over `dedupe.max_watermark`, then near-duplicates
(`dedupe.near`: `phash` within `phash_bits` of 64, or `embedding` within cosine distance
`embedding_distance`, searched as `sdlab.data.near_dupes` says). Rows are taken in index
order, so the first of every group of near-duplicates stays; every dropped row is written
with its reason, and a near-duplicate with the key of the row it duplicates and the distance
(bits for phash, cosine distance for embeddings).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.config import DedupeConfig
from sdlab.data.near_dupes import SemanticDedupe, hamming_of, hash_vectors, semantic_duplicates
from sdlab.data.records import DataError

REMOVED_SCHEMA = pa.schema(
    [("key", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string()), ("distance", pa.float32())]
)
PHASH_PART_ROWS = 262_144


def embedding_path(root: Path, stem: str) -> Path:
    """The embed stage's file for image shard `<stem>.tar`."""
    return Path(root) / "shards" / f"{stem}.safetensors"


def curation_active(cfg: DedupeConfig, watermarks: bool = False) -> bool:
    """Whether dedupe reads the embed files: a setting of its own, or `watermarks` (the embed
    pass scored them, and the kept index carries the score)."""
    scored = cfg.aesthetic_weights is not None or cfg.nsfw_weights is not None or watermarks
    return cfg.near is not None or cfg.min_clip_score is not None or scored


class Curation:
    """`curation(index keys, md5-kept positions)` -> (which stay, counts by reason), for
    `dedupe_file`; afterwards `removed` holds what it dropped."""

    def __init__(self, embeddings: Path, cfg: DedupeConfig):
        self.embeddings, self.cfg = Path(embeddings), cfg
        self.removed = REMOVED_SCHEMA.empty_table()
        self.columns: dict[str, np.ndarray] = {}  # scores of the rows that stay, for the kept index

    def __call__(self, index_keys: pa.ChunkedArray, kept: np.ndarray) -> tuple[np.ndarray, dict]:
        keys = index_keys.take(pa.array(kept, pa.int64()))
        rows = embedded_rows(keys, self.embeddings)
        survives = np.ones(len(kept), bool)
        removed, stats = [], {}

        def drop(over: np.ndarray, reason: str) -> None:  # rows still in and past a threshold go, counted
            over = survives & over
            survives[over] = False
            stats[reason] = int(over.sum())
            removed.append(_removed(keys, np.flatnonzero(over), reason))

        if self.cfg.min_clip_score is not None:
            score = rows["clip_score"].to_numpy(zero_copy_only=False)
            self.columns["embed_clip_score"] = score
            drop(score < self.cfg.min_clip_score, "clip_score_below")  # NaN (no caption) is never below
            stats["clip_score_missing"] = int(np.isnan(score).sum())  # kept, counted apart
        if self.cfg.aesthetic_weights is not None:
            score = aesthetic_of(rows, self.embeddings, self.cfg.aesthetic_weights)
            self.columns["embed_aesthetic"] = score
            stats["aesthetic_mean"] = round(float(score.mean()), 4) if len(score) else None
            if self.cfg.min_aesthetic is not None:
                drop(score < self.cfg.min_aesthetic, "aesthetic_below")
        if self.cfg.nsfw_weights is not None:
            score = nsfw_of(rows, self.embeddings, self.cfg.nsfw_weights)
            self.columns["embed_nsfw"] = score
            if self.cfg.max_nsfw is not None:
                drop(score > self.cfg.max_nsfw, "nsfw_above")
        if "watermark" in rows.column_names:
            score = rows["watermark"].to_numpy(zero_copy_only=False)
            self.columns["embed_watermark"] = score
            if self.cfg.max_watermark is not None:
                drop(score > self.cfg.max_watermark, "watermark_above")
        elif self.cfg.max_watermark is not None:
            raise DataError(
                f"dedupe.max_watermark: {self.embeddings / 'index.parquet'} has no watermark scores: "
                "set embed.watermark_weights and run embed again"
            )
        if self.cfg.near is not None:
            alive = np.flatnonzero(survives)
            found = near_duplicates(rows.take(pa.array(alive, pa.int64())), self.embeddings, self.cfg)
            gone, of = alive[found["row"].to_numpy()], alive[found["duplicate_of"].to_numpy()]
            survives[gone] = False
            reason = f"near_duplicate_{self.cfg.near}"
            stats[reason] = len(gone)
            removed.append(_removed(keys, gone, reason, keys.take(pa.array(of, pa.int64())), found["distance"]))
        if removed:
            self.removed = pa.concat_tables(removed)
        self.columns = {name: np.asarray(values, np.float32)[survives] for name, values in self.columns.items()}
        return survives, stats


def _removed(keys, positions, reason, duplicate_of=None, distance=None) -> pa.Table:
    count = len(positions)
    return pa.table(
        {
            "key": keys.take(pa.array(positions, pa.int64())),
            "reason": pa.array([reason] * count, pa.string()),
            "duplicate_of": duplicate_of if duplicate_of is not None else pa.nulls(count, pa.string()),
            "distance": distance if distance is not None else pa.nulls(count, pa.float32()),
        },
        schema=REMOVED_SCHEMA,
    )


def embedded_rows(keys: pa.Array | pa.ChunkedArray, embeddings: Path) -> pa.Table:
    """The embed stage's index rows (stem, position, phash[, clip_score, watermark]) of `keys`, in their order."""
    index = embeddings / "index.parquet"
    if not index.is_file():
        raise DataError(f"{index} is missing: run the embed stage (dvc repro embed)")
    table = pq.read_table(index)
    wanted = pa.table({"key": keys, "__order": pa.array(np.arange(len(keys)), pa.int64())})
    joined = wanted.join(table, "key").sort_by("__order")
    if joined.num_rows != len(keys):
        missing = pc.filter(wanted["key"], pc.invert(pc.is_in(wanted["key"], table["key"])))
        raise DataError(f"{index}: {len(missing)} kept image(s) have no embedding, e.g. {missing[0]}: run embed again")
    return joined.drop_columns(["__order"])


def aesthetic_of(rows: pa.Table, embeddings: Path, weights: str) -> np.ndarray:
    """LAION's aesthetic score of every row, from its stored image embedding."""
    from sdlab.models.aesthetic import aesthetic_scores, load_aesthetic

    return _head_scores(rows, embeddings, lambda dim: load_aesthetic(weights, dim), aesthetic_scores)


def nsfw_of(rows: pa.Table, embeddings: Path, weights: str) -> np.ndarray:
    """The NSFW detector's probability for every row, from its stored image embedding."""
    from sdlab.models.nsfw import load_nsfw, nsfw_scores

    return _head_scores(rows, embeddings, lambda dim: load_nsfw(weights, dim), nsfw_scores)


def _head_scores(rows: pa.Table, embeddings: Path, load: Callable, score: Callable) -> np.ndarray:
    """A head's score of every row, read shard by shard; the head is loaded for the embeddings' width."""
    parts, _ = embedding_parts(rows, embeddings)
    scores, model = [], None
    for read in parts:
        vectors = read()
        model = model or load(vectors.shape[1])
        scores.append(score(model, vectors))
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def near_duplicates(rows: pa.Table, embeddings: Path, cfg: DedupeConfig) -> pa.Table:
    """(row, duplicate_of, distance) among `rows` (embedded_rows' table) by `cfg.near`."""
    if cfg.near == "phash":
        hashes = rows["phash"].to_numpy()
        starts = range(0, len(hashes), PHASH_PART_ROWS)
        parts = [lambda s=s: hash_vectors(hashes[s : s + PHASH_PART_ROWS]) for s in starts]
        counts = [len(hashes[s : s + PHASH_PART_ROWS]) for s in starts]
        epsilon = 2 * cfg.phash_bits / 64 + 1e-6
        found = _search(parts, counts, epsilon, cfg)
        return found.set_column(2, "distance", pa.array(hamming_of(found["distance"].to_numpy()), pa.float32()))
    parts, counts = embedding_parts(rows, embeddings)
    return _search(parts, counts, cfg.embedding_distance + 1e-6, cfg)


def _search(parts, counts, epsilon: float, cfg: DedupeConfig) -> pa.Table:
    with tempfile.TemporaryDirectory(prefix="sdlab-near-") as workdir:
        return semantic_duplicates(
            parts, counts, SemanticDedupe(epsilon=epsilon, cluster_size=cfg.cluster_size), Path(workdir)
        )


def embedding_parts(rows: pa.Table, embeddings: Path) -> tuple[list[Callable[[], np.ndarray]], list[int]]:
    """One reader per run of consecutive rows from one embedding file (an image shard)."""
    from safetensors import safe_open

    stems = rows["stem"].to_numpy(zero_copy_only=False)
    positions = rows["position"].to_numpy()
    bounds = [*np.flatnonzero(np.r_[True, stems[1:] != stems[:-1]]), len(stems)] if len(stems) else [0]

    def reader(stem: str, taken: np.ndarray) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            with safe_open(str(embedding_path(embeddings, stem)), "np") as handle:
                if "image" not in handle.keys():
                    raise DataError(f"{embeddings}: shard {stem} has no image embeddings (set embed.model)")
                return handle.get_tensor("image")[taken]

        return read

    parts = [reader(str(stems[a]), positions[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return parts, [int(b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
