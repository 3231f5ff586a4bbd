"""A pool of worker processes, one per device, with process isolation.

Each worker is a fresh `spawn`ed interpreter whose `CUDA_VISIBLE_DEVICES` names its one
GPU (or nothing on CPU) *before* it imports torch, so workers never share a CUDA context.
Jobs are split deterministically: across nodes by (node rank, number of nodes), then
across this node's workers by position, so several machines split one dataset with no
coordinator and output i depends only on input i. The mapper that owns the model is
built inside the worker from a picklable builder (a crashed worker reruns alone).
A pool of one CPU slot runs in the calling process: there is no device to keep apart, and a
spawned interpreter would import torch, diffusers and transformers again (~5 s) first.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sdlab.errors import ConfigError
from sdlab.errors import WorkerError as WorkerError  # its home is errors.py; re-exported

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    rank: int  # position of this worker on its node
    world: int  # workers on this node
    device: str | None  # GPU id as CUDA_VISIBLE_DEVICES names it; None on CPU
    threads: int  # intra-op threads for torch in this worker


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without creating a CUDA context."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]  # NVML count, no context
    except ImportError:
        return []


def plan_slots(workers: int | None, threads_per_worker: int = 1, jobs: int | None = None) -> list[Slot]:
    """One slot per visible GPU (or `workers` of them, round-robin); on CPU, `workers`
    processes (default: enough to use every core) of `threads_per_worker` threads each;
    never more slots than `jobs` (a worker with nothing to do would only start up)."""
    gpus = visible_gpus()
    cores = os.cpu_count() or 1
    count = workers or (len(gpus) if gpus else max(1, cores // threads_per_worker))
    if jobs is not None:
        count = min(count, max(1, jobs))
    if gpus:
        return [Slot(i, count, gpus[i % len(gpus)], max(1, cores // count)) for i in range(count)]
    return [Slot(i, count, None, threads_per_worker) for i in range(count)]


def node_split(num_nodes: int | None, node_rank: int | None, section: str = "encode") -> tuple[int, int]:
    """(node rank, number of nodes) from params (`section`'s keys), else from the launcher's
    environment: `NNODES`/`NODE_RANK`, or torchrun's `WORLD_SIZE / LOCAL_WORLD_SIZE` and `GROUP_RANK`."""
    env = os.environ
    if num_nodes is None:
        if "NNODES" in env:
            num_nodes = int(env["NNODES"])
        elif "WORLD_SIZE" in env and "LOCAL_WORLD_SIZE" in env:
            num_nodes = max(1, int(env["WORLD_SIZE"]) // int(env["LOCAL_WORLD_SIZE"]))
        else:
            num_nodes = 1
    if node_rank is None:
        node_rank = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    if not 0 <= node_rank < num_nodes:
        raise ConfigError(
            f"{section}.node_rank: must be in 0..{num_nodes - 1} (num_nodes {num_nodes}), got {node_rank}"
        )
    return node_rank, num_nodes


def assign(jobs: Sequence, rank: int, world: int) -> list:
    """Deterministic share of `jobs` for `rank` of `world` (every world-th job)."""
    return list(jobs[rank::world])


def assign_by_shard(jobs: Sequence, shard_of: Callable[[Any], str], rank: int, world: int) -> list:
    """The jobs whose shard is this `rank`'s: every world-th of the sorted shard names, so a
    rank reads only its own shards and the split depends on the set of shard names alone
    (give it every job, then drop the done ones: then it does not depend on what another
    node has already done)."""
    shards = sorted({shard_of(job) for job in jobs})
    mine = set(shards[rank::world])
    return [job for job in jobs if shard_of(job) in mine]


@contextlib.contextmanager
def _environ(overrides: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def device_and_dtype(precision: str, device: str | None = None):
    """A worker's torch device (its one visible GPU, else the CPU, unless `device` names
    one) and compute dtype: `precision` (fp16/bf16) on GPUs, fp32 on CPUs, where half
    precision is slow and lossy."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return device, half if half is not None and device.type == "cuda" else torch.float32


def _entry(target: Callable[[Slot, Any], None], slot: Slot, payload: Any) -> None:
    import torch  # first torch import of this process: after CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(slot.threads)
    target(slot, payload)


@contextlib.contextmanager
def _main_left_alone() -> Iterator[None]:
    """While a worker is spawned: hide the parent's `__main__` script from multiprocessing,
    which would otherwise run it again in the child before the target (its imports: seconds
    per worker for a stage, a benchmark or a user's script, measured 5.6 s for one). Targets
    and payloads are sdlab's own (picklable by module), so the child never needs it."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main and name in main.__dict__}
    if "__spec__" in saved:  # `python -m module`: the child would import the module by name
        main.__spec__ = None
    if "__file__" in saved:  # `python script.py`: the child would run the script as __mp_main__
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def run_in_process(target: Callable[[Slot, Any], None], payload: Any, slot: Slot) -> None:
    """`target(slot, payload)` here, on `slot.threads` intra-op threads (restored after); its
    errors are raised as they are (a DataError stays a one-line stage error)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(slot.threads)
    try:
        target(slot, payload)
    finally:
        torch.set_num_threads(threads)


def run_pool(target: Callable[[Slot, Any], None], payload: Any, slots: list[Slot]) -> None:
    """Run `target(slot, payload)` in one spawned process per slot (a single CPU slot: in
    this process); raise if any fails."""
    if len(slots) == 1 and slots[0].device is None:
        return run_in_process(target, payload, slots[0])
    context = multiprocessing.get_context("spawn")
    processes = []
    for slot in slots:
        env = {"CUDA_VISIBLE_DEVICES": slot.device or "", "OMP_NUM_THREADS": str(slot.threads)}
        with _environ(env), _main_left_alone():
            process = context.Process(target=_entry, args=(target, slot, payload), name=f"worker-{slot.rank}")
            process.start()
        processes.append(process)
    failed = []
    for slot, process in zip(slots, processes, strict=True):
        process.join()
        if process.exitcode != 0:
            failed.append(f"worker {slot.rank} (device {slot.device or 'cpu'}) exited with {process.exitcode}")
    if failed:
        raise WorkerError("; ".join(failed))
