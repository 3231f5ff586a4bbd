"""Shared fixtures: tiny real inputs made in the test (images, records, models)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlab.config import Params, ScrapeConfig, SyntheticConfig, parse_params
from sdlab.sources import synthetic

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

# `pytest -n N` (pytest-xdist, `make test`): N worker processes share the cores, so each worker
# and every process its tests start (stages, DVC, accelerate) gets its share of them as threads
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Loopback only, even when the code under test is broken: this process and every Python
# process it starts (sitecustomize on PYTHONPATH) refuse and record non-loopback traffic.
GUARD_DIR = REPO / "tests" / "netguard"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH")]))
# one log per pytest process: under pytest-xdist each worker's tests read their own attempts only
if "SDLAB_NETGUARD_LOG" not in os.environ or os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["SDLAB_NETGUARD_LOG"] = str(Path(tempfile.mkdtemp(prefix="sdlab-netguard-")) / "attempts.jsonl")
sys.path.insert(0, str(GUARD_DIR))
import socket  # noqa: E402

import loopback_guard  # noqa: E402

loopback_guard.install()  # the socket guard: resolve/connect/sendto outside loopback refused and recorded
assert socket.socket.connect is loopback_guard.connect and socket.getaddrinfo is loopback_guard.getaddrinfo


# `make test` runs every test and every mutant in one pytest-xdist session (`--dist loadscope`,
# scopes below): a test module stays on one worker (its module fixtures are built once), each
# mutant goes to whichever worker is free. The slowest modules start first and the mutants come
# last, so the session ends on short pieces of work instead of one worker finishing a long file
# alone. (xdist's own `loadgroup` cannot do this under pytest 9: it renames items through
# `_nodeid`, which pytest 9 no longer reads.)
SLOW_FIRST = (
    "test_train_scale",
    "test_pipeline_e2e",
    "test_encode",
    "test_buckets_e2e",
    "test_emoji_sets_e2e",
    "test_engines",
    "test_label_judge",
    "test_fetch",
    "test_caption_qwen",
    "test_discord",
    "test_evaluate",
)
MUTANT_RUNS = "test_the_matching_test_fails_against_the_breakage["


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        if item.get_closest_marker("mutants"):
            return (2, 0)
        module = item.module.__name__.rpartition(".")[2]
        return (0, SLOW_FIRST.index(module)) if module in SLOW_FIRST else (1, 0)

    items.sort(key=rank)  # stable: each module keeps its own order


def pytest_xdist_make_scheduler(config, log):
    """Under `--dist loadscope`: one scope per test module, but one per mutant."""
    if config.getvalue("dist") != "loadscope":
        return None  # xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndMutants(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, test = nodeid.partition("::")
            return nodeid if test.startswith(MUTANT_RUNS) else module

    return ModulesAndMutants(config, log)


class NetGuard:
    """What the tests' processes tried to reach outside loopback since the test began."""

    def __init__(self):
        self.start = len(loopback_guard.attempts())

    def attempts(self) -> list[dict]:
        return loopback_guard.attempts()[self.start :]


@pytest.fixture
def netguard() -> NetGuard:
    """For tests that expect refused attempts (and assert on them)."""
    return NetGuard()


# Chromium's own background requests (sync, updates, its search engine's preconnect) pass the
# scraper's guard proxy, which tries to resolve them: the guard refuses those look-ups (no packet
# leaves). Tolerated as look-ups only; a connect outside loopback is never tolerated.
BROWSER_SERVICE_NAMES = ("google.com", "googleapis.com", "gstatic.com", "gvt1.com", "duckduckgo.com")


def unexpected(attempts: list[dict]) -> list[dict]:
    return [a for a in attempts if not (a["what"] == "resolve" and a["target"].endswith(BROWSER_SERVICE_NAMES))]


@pytest.fixture(autouse=True)
def _loopback_only(request):
    guard = NetGuard()
    yield
    if "netguard" not in request.fixturenames:
        assert not unexpected(guard.attempts()), f"non-loopback network attempts during the test: {guard.attempts()}"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def profile(name: str) -> dict:
    """configs/<name>.yaml laid over params.yaml: the params that profile runs with."""
    from sdlab.profiles import load_profile

    return load_profile(name, REPO).composed


def profile_file(name: str, folder: Path) -> Path:
    """`profile(name)` written as a params file in `folder`, for a stage's --params."""
    import yaml

    path = folder / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(profile(name), sort_keys=False))
    return path


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(profile("tiny"))


@pytest.fixture
def blob_records(tmp_path) -> list[dict]:
    """40 synthetic blob records with images on disk, 2 of them planted duplicates."""
    config = ScrapeConfig(seed=3, synthetic=SyntheticConfig(num_images=40, image_px=64, duplicate_fraction=0.05))
    return synthetic.scrape(config, tmp_path / "raw")


def run_stage(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a stage entry point the way DVC does, capturing its output."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def random_rgb(seed: int, px: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (px, px, 3), dtype=np.uint8)


def packed_blobs(root: Path, seed: int, count: int, image_px: int, shard_size: int) -> list[dict]:
    """`count` blob images drawn and packed into `root/shards` as the download stage does; index rows."""
    import pyarrow as pa

    from sdlab.config import DownloadConfig
    from sdlab.data.download import download

    config = ScrapeConfig(seed=seed, synthetic=SyntheticConfig(num_images=count, image_px=64, duplicate_fraction=0))
    records = synthetic.scrape(config, root / "raw")
    index, _ = download(
        pa.Table.from_pylist(records),
        DownloadConfig(image_px=image_px, shard_size=shard_size, processes=1),
        root / "shards",
    )
    return index.to_pylist()


def project_copy(work: Path, params_yaml: str) -> Path:
    """A fresh git+dvc copy of the project at `work` with `params_yaml` as params.yaml."""
    work.mkdir(parents=True)
    for name in ["dvc.yaml", "stages", "src", "configs", ".dvc", ".gitignore"]:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(work / ".dvc" / "tmp", ignore_errors=True)
    (work / "params.yaml").write_text(params_yaml)
    for command in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *command], cwd=work, check=True)
    return work


def dvc_env(workdir: Path) -> dict:
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(workdir / "src"), str(GUARD_DIR)]),
    )  # the copy runs its own code


def run_module_in(workdir: Path, module: str, name: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a project copy, as `dvc` runs its stages there; must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=workdir,
        env=dvc_env(workdir),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{name} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def sdlab_in(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module_in(workdir, "sdlab.cli", "sdlab", *args)


def dvc(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module_in(workdir, "dvc", "dvc", *args)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    """A tiny random Qwen2.5-VL folder (`tests/support/tiny_qwen.py`), for both caption engines."""
    from support.tiny_qwen import build_tiny_qwen

    return str(build_tiny_qwen(tmp_path_factory.mktemp("qwen") / "tiny-qwen"))


@pytest.fixture(scope="module")
def qwen_images(tmp_path_factory):
    """12 blob images in 3 shards, as the download stage writes them: (shards folder, index rows)."""
    root = tmp_path_factory.mktemp("qwen-data")
    return root / "shards", packed_blobs(root, seed=11, count=12, image_px=32, shard_size=4)
