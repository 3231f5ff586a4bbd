"""Training data as a stream read from disk: memory bounded by a shuffle window, not by the dataset.

Each rank reads only its own latent shards (whole shards round robin; rows round robin when
there are fewer shards than ranks). Its samples form an endless stream of epochs; in epoch
`e` the rank's shards are put in an order drawn from (seed, e) and read in windows of
`shuffle_shards` shards, each window's train rows permuted by (seed, e, window): a block
shuffle, as webdataset's shard shuffle + buffer or litdata's chunk shuffle do. Micro-step
`m` takes stream positions [m*B, (m+1)*B), so a batch is a pure function of (seed, m,
rank, world): a resumed run needs only the step to see exactly what an uninterrupted one
would have seen, with no replay.

A loader thread assembles batch m+1 (and reads the next window from disk) while step m
runs, with numpy only: a torch op there would compete with the step's intra-op threads
(measured: 50% slower steps on 2 cores). Arrays stay in their stored dtype (fp16 latents,
int token ids) and become tensors without a copy when the step takes them. Resident memory:
at most `MAX_WINDOWS` windows of `shuffle_shards` x shard size samples.
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdlab.latents import SPLIT_CODES, read_rows_numpy

MAX_WINDOWS = 3  # the window being read, the next one (prefetched) and one a batch may straddle


@dataclass(frozen=True)
class Part:
    """The rows of one shard a rank trains on: every `stride`-th train row from `offset`."""

    shard: str
    rows: int
    stride: int = 1
    offset: int = 0
    bucket: str | None = None  # only this aspect bucket's rows (`sdlab.latents`)


def rank_parts(
    shards: list[dict], rank: int, world: int, split: str = "train", bucket: str | None = None
) -> list[Part]:
    """Rank `rank` of `world`'s share of `shards` (meta.json entries with row counts per split;
    with `bucket`, of that bucket's rows, counted in each entry's `buckets`)."""
    if bucket is not None:
        shards = [{"name": s["name"], split: s["buckets"].get(bucket, {}).get(split, 0)} for s in shards]
    shards = [s for s in shards if s[split] > 0]
    if len(shards) >= world:
        return [Part(s["name"], s[split], bucket=bucket) for s in shards[rank::world]]
    return [
        Part(s["name"], len(range(rank, s[split], world)), world, rank, bucket)
        for s in shards
        if len(range(rank, s[split], world))
    ]


def bucket_parts(shards: list[dict], rank: int, world: int, split: str = "train") -> dict[str, list[Part]]:
    """Per aspect bucket of the latents (`meta.json` shard entries' `buckets`), rank's parts."""
    buckets = sorted({b for s in shards for b in s.get("buckets", {})})
    return {b: rank_parts(shards, rank, world, split, b) for b in buckets}


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([*parts])


class LatentStream:
    """Batches of micro-steps for one rank, read from the latents folder with prefetch."""

    def __init__(
        self, root: str | Path, parts: list[Part], batch_size: int, seed: int, shuffle_shards: int, split: str = "train"
    ):
        if not parts:
            raise ValueError(f"{root}: this rank has no {split} rows to read")
        self.root, self.parts, self.batch_size, self.seed = Path(root), parts, batch_size, seed
        self.shuffle_shards, self.split = shuffle_shards, SPLIT_CODES[split]
        self.samples_per_epoch = sum(p.rows for p in parts)
        self._windows: OrderedDict[tuple[int, int], Future] = OrderedDict()
        self._lock = threading.Lock()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="window-reader")
        self._assembler = ThreadPoolExecutor(1, thread_name_prefix="batch-assembler")
        self._next: tuple[int, Future] | None = None

    def __len__(self) -> int:
        return self.samples_per_epoch

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a few small layouts, one stream per process)
    def epoch_layout(self, epoch: int) -> tuple[list[list[Part]], list[int]]:
        """This epoch's windows (lists of parts) and the stream offset where each starts."""
        order = _rng(self.seed, 7919, epoch).permutation(len(self.parts)).tolist()
        ordered = [self.parts[i] for i in order]
        windows = [ordered[i : i + self.shuffle_shards] for i in range(0, len(ordered), self.shuffle_shards)]
        starts, total = [], 0
        for window in windows:
            starts.append(total)
            total += sum(p.rows for p in window)
        return windows, starts

    def position(self, sample: int) -> dict:
        """Where stream position `sample` lies: epoch, window, row in the permuted window."""
        epoch, offset = divmod(sample, self.samples_per_epoch)
        _, starts = self.epoch_layout(epoch)
        window = bisect.bisect_right(starts, offset) - 1
        return {
            "epoch": epoch,
            "window": window,
            "row": offset - starts[window],
            "samples_seen_in_epoch": offset,
            "samples_per_epoch": self.samples_per_epoch,
        }

    def _load_window(self, epoch: int, window: int) -> dict[str, np.ndarray]:
        windows, _ = self.epoch_layout(epoch)
        pieces = [
            read_rows_numpy(self.root, p.shard, self.split, p.stride, p.offset, p.bucket) for p in windows[window]
        ]
        arrays = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
        count = len(next(iter(arrays.values())))
        permutation = _rng(self.seed, 104_729, epoch, window).permutation(count)
        return {name: array[permutation] for name, array in arrays.items()}

    def _window(self, epoch: int, window: int) -> dict[str, np.ndarray]:
        """A window's tensors, from the cache or the reader; schedules the following window."""
        windows_per_epoch = len(self.epoch_layout(epoch)[0])
        following = (epoch, window + 1) if window + 1 < windows_per_epoch else (epoch + 1, 0)
        with self._lock:
            for key in ((epoch, window), following):
                if key not in self._windows:
                    self._windows[key] = self._reader.submit(self._load_window, *key)
                self._windows.move_to_end(key)
            while len(self._windows) > MAX_WINDOWS:
                self._windows.popitem(last=False)
            future = self._windows[(epoch, window)]
        return future.result()

    def _assemble(self, micro_step: int) -> dict[str, np.ndarray]:
        start, pieces = micro_step * self.batch_size, []
        remaining = self.batch_size
        while remaining:
            where = self.position(start)
            tensors = self._window(where["epoch"], where["window"])
            rows = len(next(iter(tensors.values())))
            take = min(remaining, rows - where["row"])
            pieces.append({name: t[where["row"] : where["row"] + take] for name, t in tensors.items()})
            start, remaining = start + take, remaining - take
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}

    def batch(self, micro_step: int) -> dict[str, torch.Tensor]:
        """The stored tensors of micro-step `micro_step`; starts assembling the next one."""
        if self._next is not None and self._next[0] == micro_step:
            future = self._next[1]
        else:
            future = self._assembler.submit(self._assemble, micro_step)
        self._next = (micro_step + 1, self._assembler.submit(self._assemble, micro_step + 1))
        return {name: torch.from_numpy(array) for name, array in future.result().items()}

    def close(self) -> None:
        self._assembler.shutdown(wait=True, cancel_futures=True)
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._windows.clear()


class BucketStream:
    """Batches of aspect buckets: every batch holds rows of one bucket (one latent shape).

    Each bucket is a `LatentStream` of its own (block shuffle, prefetch, bounded windows). Epoch
    `e` takes k_b(e) = floor((e+1) n_b / B) - floor(e n_b / B) batches from bucket b, n_b its
    rows (per rank: the fewest any rank has, so every rank steps on the same bucket), in an
    order drawn from (seed, e): each bucket's rows are seen once per pass over them, a
    remainder of less than a batch rolling into the next epoch rather than making a short
    batch. A bucket with fewer rows than a batch is not drawn (`dropped`). Micro-step m is a
    pure function of (seed, m, rank, world), as for one bucket."""

    def __init__(
        self,
        root: str | Path,
        parts: dict[str, list[Part]],
        rows: dict[str, int],
        batch_size: int,
        seed: int,
        shuffle_shards: int,
    ):
        self.batch_size, self.seed = batch_size, seed
        self.dropped = {b: n for b, n in sorted(rows.items()) if n < batch_size}
        self.buckets = [b for b in sorted(parts) if rows.get(b, 0) >= batch_size]
        if not self.buckets:
            raise ValueError(f"{root}: no aspect bucket has {batch_size} train rows for a batch ({rows})")
        self.rows = np.array([rows[b] for b in self.buckets], dtype=np.int64)
        self.streams = [LatentStream(root, parts[b], batch_size, seed, shuffle_shards) for b in self.buckets]
        self.samples_per_epoch = int(self.rows.sum())

    def __len__(self) -> int:
        return self.samples_per_epoch

    def batches_before(self, epoch: int) -> np.ndarray:
        """Per bucket, its batches in epochs [0, epoch)."""
        return epoch * self.rows // self.batch_size

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The bucket (index) of each batch of epoch `epoch`, in order."""
        counts = self.batches_before(epoch + 1) - self.batches_before(epoch)
        return _rng(self.seed, 6007, epoch).permutation(np.repeat(np.arange(len(self.buckets)), counts))

    def locate(self, micro_step: int) -> tuple[int, int, int, int]:
        """(epoch, batch in epoch, bucket index, that bucket's batch number) of a micro-step."""
        low, high = 0, micro_step // max(1, int(self.batches_before(1).sum())) + 2
        while self.batches_before(high).sum() <= micro_step:  # an epoch may have 0 batches
            high *= 2
        while high - low > 1:  # the last epoch whose start is at or before micro_step
            middle = (low + high) // 2
            low, high = (middle, high) if self.batches_before(middle).sum() <= micro_step else (low, middle)
        epoch, within = low, micro_step - int(self.batches_before(low).sum())
        order = self.epoch_order(epoch)
        bucket = int(order[within])
        return (
            epoch,
            within,
            bucket,
            int(self.batches_before(epoch)[bucket] + np.count_nonzero(order[:within] == bucket)),
        )

    def position(self, sample: int) -> dict:
        epoch, within, bucket, _ = self.locate(sample // self.batch_size)
        return {"epoch": epoch, "batch": within, "bucket": self.buckets[bucket], "samples_per_epoch": len(self)}

    def batch(self, micro_step: int) -> dict[str, torch.Tensor]:
        _, _, bucket, number = self.locate(micro_step)
        return self.streams[bucket].batch(number)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
