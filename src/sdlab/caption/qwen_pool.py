"""Caption with Qwen2.5-VL on a pool of worker processes, through the content cache."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from sdlab.caption.cache import CacheWriter, read_cache
from sdlab.caption.qwen_vl import GenerationSettings
from sdlab.data.shards import read_shard, sample_image
from sdlab.errors import DataError
from sdlab.workers import Slot, assign_by_shard, plan_slots, run_pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionJob:
    cache_key: str
    key: str
    shard: str
    title: str


@dataclass(frozen=True)
class CaptionSpec:
    settings: GenerationSettings
    shards_dir: str
    cache_dir: str
    batch_size: int
    precision: str
    jobs: tuple[CaptionJob, ...]
    engine: str = "transformers"  # | vllm: the worker runs under `python` (vLLM's environment)
    python: str = ""


def spec_from_dict(data: dict) -> CaptionSpec:
    """A `CaptionSpec` from `dataclasses.asdict` of one (how a vLLM worker receives its share)."""
    fields = dict(data, settings=GenerationSettings(**data["settings"]))
    return CaptionSpec(**fields | {"jobs": tuple(CaptionJob(**job) for job in data["jobs"])})


class ShardImages:
    """Images by (shard, key), keeping the last shard read (jobs come sorted by shard)."""

    def __init__(self, shards_dir: str):
        self.shards_dir, self.name, self.samples = Path(shards_dir), None, {}

    def get(self, shard: str, key: str) -> Image.Image:
        if shard != self.name:
            self.name, self.samples = shard, read_shard(self.shards_dir / shard)
        return Image.fromarray(sample_image(self.samples[key]))


def caption_worker(slot: Slot, spec: CaptionSpec) -> None:
    """Worker body: caption this slot's share on the chosen engine (vLLM in its own environment)."""
    if spec.engine == "vllm":
        from sdlab.caption.vllm_engine import run_in_vllm_env

        run_in_vllm_env(slot, spec)
        return
    from sdlab.caption.qwen_vl import QwenCaptioner

    caption_jobs(slot, spec, lambda: QwenCaptioner(spec.settings, None, spec.precision))


def caption_jobs(slot: Slot, spec: CaptionSpec, make_captioner: Callable[[], Any]) -> None:
    """Caption this slot's share with `make_captioner()` (anything with `generate(images,
    titles)`), appending each finished batch to the cache."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s caption[{slot.rank}] %(levelname)s: %(message)s")
    jobs = assign_by_shard(spec.jobs, lambda j: j.shard, slot.rank, slot.world)  # each shard read by one worker
    if not jobs:
        return
    captioner = make_captioner()
    # one part file per process and host: nodes that share the cache folder never append to one file
    writer = CacheWriter(spec.cache_dir, f"part-{socket.gethostname()}-{slot.rank:03d}-{os.getpid()}")
    images = ShardImages(spec.shards_dir)
    batches = [jobs[i : i + spec.batch_size] for i in range(0, len(jobs), spec.batch_size)]
    for batch in tqdm(batches, desc=f"caption[{slot.rank}]", unit="batch", disable=slot.rank != 0):
        raw = captioner.generate([images.get(j.shard, j.key) for j in batch], [j.title for j in batch])
        writer.append(
            [
                {
                    "key": j.cache_key,
                    "image": j.key,
                    "raw": text,
                    "model": spec.settings.model,
                    "prompt_hash": spec.settings.prompt_hash,
                }
                for j, text in zip(batch, raw, strict=True)
            ]
        )


def cache_keys(rows: list[dict], settings: GenerationSettings, shards_dir: str) -> dict[str, str]:
    """Row key -> cache key; the pixels part is a hash of the packed image, each shard read once."""
    keys, shard, samples = {}, None, {}
    for row in sorted(rows, key=lambda r: (r["shard"], r["key"])):
        if row["shard"] != shard:
            shard, samples = row["shard"], read_shard(Path(shards_dir) / row["shard"])
        sample = samples.get(row["key"], {})
        image = sample.get("png") or sample.get("jpg") or b""
        pixels = hashlib.sha256(image).hexdigest()[:16]
        keys[row["key"]] = settings.cache_key(row["md5"], pixels, str(row.get("title") or ""))
    return keys


def unique_jobs(rows: list[dict], keys: dict[str, str]) -> list[CaptionJob]:
    """One job per cache key (the same bytes and title are captioned once), at its first row
    in (shard, key) order."""
    jobs, queued = [], set()
    for row in sorted(rows, key=lambda r: (r["shard"], r["key"])):
        if keys[row["key"]] not in queued:
            queued.add(keys[row["key"]])
            jobs.append(CaptionJob(keys[row["key"]], row["key"], row["shard"], str(row.get("title") or "")))
    return jobs


def caption_missing(
    rows: list[dict],
    settings: GenerationSettings,
    shards_dir: str,
    cache_dir: str,
    *,
    batch_size: int,
    workers: int | None,
    threads_per_worker: int | None,
    precision: str,
    node: tuple[int, int] = (0, 1),
    engine: str = "transformers",
    python: str = "",
) -> tuple[dict[str, dict], dict[str, str], int]:
    """Caption every row of this `node`'s (rank, number of nodes) image shards whose cache key
    is missing; return (cache, row key -> cache key, number captioned now). Nodes split the
    shards, not the missing rows, so two nodes started at different times on one cache folder
    caption each image once; a node that finds another node's share missing raises."""
    cache = read_cache(cache_dir)
    keys = cache_keys(rows, settings, shards_dir)
    jobs = unique_jobs(rows, keys)
    node_rank, num_nodes = node
    mine = assign_by_shard(jobs, lambda j: j.shard, node_rank, num_nodes)
    todo = [j for j in mine if j.cache_key not in cache]
    if todo:
        if engine == "vllm":
            from sdlab.caption.vllm_engine import check_vllm_python

            check_vllm_python(python)
        slots = plan_slots(workers, threads_per_worker or os.cpu_count() or 1, jobs=len({j.shard for j in todo}))
        log.info(
            "node %d/%d: captioning %d of %d images on %d worker(s)",
            node_rank,
            num_nodes,
            len(todo),
            len(rows),
            len(slots),
        )
        run_pool(
            caption_worker,
            CaptionSpec(settings, str(shards_dir), str(cache_dir), batch_size, precision, tuple(todo), engine, python),
            slots,
        )
        cache = read_cache(cache_dir)
    missing = [j for j in jobs if j.cache_key not in cache]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) not captioned yet, e.g. {missing[0].key} in {missing[0].shard}: other "
            "nodes have not finished their share; run this stage again once they have"
        )
    return cache, keys, len(todo)
