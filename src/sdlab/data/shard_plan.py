"""A stage's work split by image shard: the rows it needs, sorted by (shard, key) and written
one parquet row group per shard, and one job per shard naming its row group and the sha256 of
those rows (part of each output's fingerprint). Encode and embed plan their passes this way;
workers read only their own shards' row groups."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.io import arrow_digest

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class ShardJob:
    shard: str  # input tar name
    group: int  # row group of the plan file holding this shard's rows
    digest: str  # sha256 of those rows' planned columns

    @property
    def stem(self) -> str:
        return Path(self.shard).stem


def write_shard_plan(rows: pa.Table, columns: list[str], path: Path) -> list[ShardJob]:
    """`columns` of `rows` (which also have `shard` and `key`) sorted by (shard, key), one
    parquet row group per shard, at `path`; a job per shard, in shard order."""
    ordered = rows.select(["shard", *columns]).sort_by([("shard", "ascending"), ("key", "ascending")])
    codes = pc.dictionary_encode(ordered["shard"]).combine_chunks().indices.to_numpy()
    bounds = [*np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]), len(codes)] if len(codes) else [0]
    jobs = []
    with pq.ParquetWriter(path, ordered.select(columns).schema) as writer:
        for group, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            part = ordered.slice(start, stop - start).combine_chunks()
            writer.write_table(part.select(columns), row_group_size=stop - start)
            jobs.append(ShardJob(part["shard"][0].as_py(), group, arrow_digest(*(part[c].chunk(0) for c in columns))))
    return jobs


def image_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(key, encoded image bytes) of a webdataset tar's images, in tar order."""
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if member.isfile() and ext.lower() in IMAGE_EXTENSIONS:
                yield key, tar.extractfile(member).read()
