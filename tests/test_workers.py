import os
import subprocess
import sys

import pytest
from conftest import REPO

from sdlab.config import ConfigError
from sdlab.workers import Slot, WorkerError, assign, assign_by_shard, node_split, plan_slots, run_pool


def test_nodes_and_workers_split_the_jobs_exactly_once():
    jobs = list(range(23))
    seen = []
    for node in range(3):
        node_jobs = assign(jobs, node, 3)
        for worker in range(2):
            seen += assign(node_jobs, worker, 2)
    assert sorted(seen) == jobs


def test_a_shard_split_gives_each_shard_to_one_rank():
    jobs = [(f"{shard:05d}.tar", image) for shard in range(7) for image in range(3)]
    shares = [assign_by_shard(jobs, lambda job: job[0], rank, 3) for rank in range(3)]
    assert sorted(job for share in shares for job in share) == sorted(jobs)
    assert [sorted({shard for shard, _ in share}) for share in shares][1] == ["00001.tar", "00004.tar"]
    # the same shards for the same shard names, in whatever order the jobs come
    assert assign_by_shard(jobs[::-1], lambda job: job[0], 1, 3) == shares[1][::-1]


def test_node_split_reads_params_then_the_launcher_environment(monkeypatch):
    for name in ("NNODES", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert node_split(None, None) == (0, 1)
    assert node_split(4, 2) == (2, 4)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("GROUP_RANK", "1")
    assert node_split(None, None) == (1, 2)  # torchrun: 2 nodes of 8
    with pytest.raises(ConfigError, match="encode.node_rank"):
        node_split(2, 5)
    with pytest.raises(ConfigError, match="caption.node_rank: must be in 0..1"):
        node_split(2, 5, "caption")


def test_cpu_slots_split_the_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    slots = plan_slots(None, threads_per_worker=1)
    assert len(slots) == (os.cpu_count() or 1) and all(s.device is None and s.threads == 1 for s in slots)
    assert [s.rank for s in plan_slots(3, 1)] == [0, 1, 2]


def test_gpu_slots_get_one_device_each(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert [s.device for s in plan_slots(None)] == ["2", "5"]
    assert [s.device for s in plan_slots(3)] == ["2", "5", "2"]


def report_environment(slot: Slot, out_dir: str) -> None:
    import torch

    with open(f"{out_dir}/{slot.rank}.txt", "w") as handle:
        handle.write(f"{os.environ['CUDA_VISIBLE_DEVICES']}|{torch.get_num_threads()}")


def test_each_worker_process_sees_only_its_device_before_torch_loads(tmp_path):
    slots = [Slot(0, 2, "3", 1), Slot(1, 2, "7", 1)]
    run_pool(report_environment, str(tmp_path), slots)
    assert (tmp_path / "0.txt").read_text() == "3|1"
    assert (tmp_path / "1.txt").read_text() == "7|1"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") != "3"  # the parent's environment is restored


def fail(slot: Slot, payload) -> None:
    raise RuntimeError("boom")


def test_a_failing_worker_fails_the_pool_with_its_rank():
    with pytest.raises(WorkerError, match=r"worker 0 \(device cpu\) exited with 1; worker 1 .* exited with 1"):
        run_pool(fail, None, [Slot(0, 2, None, 1), Slot(1, 2, None, 1)])


def report_process(slot: Slot, seen: list) -> None:
    import torch

    seen.append((os.getpid(), torch.get_num_threads()))


def test_one_cpu_slot_runs_in_this_process_and_its_error_is_raised_as_it_is():
    import torch

    threads, seen = torch.get_num_threads(), []
    run_pool(report_process, seen, [Slot(0, 1, None, 3)])
    assert seen == [(os.getpid(), 3)] and torch.get_num_threads() == threads  # no spawn; threads restored
    with pytest.raises(RuntimeError, match="boom"):
        run_pool(fail, None, [Slot(0, 1, None, 1)])
    assert torch.get_num_threads() == threads


def test_never_more_slots_than_jobs(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert len(plan_slots(4, 1, jobs=3)) == 3 and len(plan_slots(4, 1, jobs=0)) == 1
    assert [s.world for s in plan_slots(None, 1, jobs=1)] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert [s.device for s in plan_slots(None, jobs=1)] == ["2"]


def test_a_spawned_worker_does_not_run_the_parents_script_again(tmp_path):
    """multiprocessing's spawn re-runs the parent's `__main__` in each child unless it is hidden
    (seconds of imports per worker for a stage or a benchmark script)."""
    marker, script = tmp_path / "runs.txt", tmp_path / "script.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'src')!r})\n"
        f"with open({str(marker)!r}, 'a') as f:\n    f.write('ran\\n')\n"
        "if __name__ == '__main__':\n"
        "    from sdlab.workers import Slot, run_pool\n"
        "    run_pool(print, 'payload', [Slot(0, 2, None, 1), Slot(1, 2, None, 1)])\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("payload") == 2  # both workers ran their target
    assert marker.read_text() == "ran\n"  # and the script ran once: in the parent
