"""`download.distributor: pyspark | ray`: img2dataset on a Spark session / Ray cluster gives what
multiprocessing gives, row for row and byte for byte (issue 17).

Each run is `tests/support/sealed_download.py` in a network namespace of its own (`unshare --net`):
a JVM or Ray's C++ servers are out of reach of the tests' Python socket guard (and Ray's core
looks for 8.8.8.8:53 at every start), so the namespace, which has loopback alone, is what keeps
their packets on this machine. `pytest -m scale_out` runs these (and the 2-machine training
test) alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from sdlab.config import DownloadConfig
from sdlab.data.shards import read_shard
from sdlab.io import read_table

pytestmark = pytest.mark.scale_out
SCRIPT = REPO / "tests" / "support" / "sealed_download.py"
# Ray's head (its dashboard process, which runs even without the dashboard) asks the cloud metadata
# servers which cloud it is on at every start, and a `ray start` cluster with usage stats off tells
# usage-stats.ray.io so (ray/_common/usage/usage_lib.py). The namespace and the guard refuse them.
RAY_OWN_PROBES = {"169.254.169.254:80", "metadata.google.internal", "usage-stats.ray.io"}


def sealed_download(out: Path, distributor: str, started: bool = False) -> Path:
    command = ["unshare", "--net", "--", sys.executable, str(SCRIPT), str(out), "--distributor", distributor]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # spark-class, ray
    result = subprocess.run(command + ["--started"] * started, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return sealed_download(tmp_path_factory.mktemp("engines") / "multiprocessing", "multiprocessing")


def shard_contents(out: Path) -> dict[str, dict]:
    return {path.name: read_shard(path) for path in sorted((out / "images" / "shards").glob("*.tar"))}


def test_the_reference_run_fetches_every_url_once_and_keeps_each_reason(reference):
    index = read_table(reference / "images" / "index.parquet")
    reasons = dict(zip(index["title"].to_pylist(), index["reason"].to_pylist(), strict=True))
    assert reasons == {
        **{f"/e{i}.png": "" for i in range(18)},
        "/always-500.png": "http_500",
        "/page.png": "decode_error",
        "/noai.png": "robots_disallowed",
        "/gone.png": "http_404",
    }
    assert set(json.loads((reference / "requests.json").read_text()).values()) == {1}
    assert len(shard_contents(reference)) == 5  # 18 ok images, 4 a shard


# Each engine once (issue 31), on a cluster started with the runbook's commands: the engine's
# own local session (`cluster: null`) differs only in the master it is given.
@pytest.mark.parametrize("started", [True], ids=["started-cluster"])
@pytest.mark.parametrize("distributor", ["pyspark", "ray"])
def test_a_cluster_engine_downloads_what_multiprocessing_does(reference, tmp_path, distributor, started, netguard):
    out = sealed_download(tmp_path / distributor, distributor, started)
    # the same index: rows, order, statuses, reasons, md5 of the prepared images, shard of each row
    assert read_table(out / "images" / "index.parquet").equals(read_table(reference / "images" / "index.parquet"))
    assert shard_contents(out) == shard_contents(reference)  # the same image bytes in the same shards
    requests = json.loads((out / "requests.json").read_text())
    assert requests == json.loads((reference / "requests.json").read_text())  # each URL fetched once
    for address in json.loads((out / "listening.json").read_text()):  # every server bound to loopback
        host = ipaddress.ip_address(address.rsplit(":", 1)[0])
        host = host.ipv4_mapped or host if host.version == 6 else host
        assert host.is_loopback, f"{distributor} listened on {address}"
    probes = {attempt["target"] for attempt in netguard.attempts()}
    assert probes <= (RAY_OWN_PROBES if distributor == "ray" else set()), probes
    if distributor == "pyspark" and started:  # the stage's session ran on the standalone cluster's workers
        for worker in ("worker0", "worker1"):
            assert "Asked to launch executor" in (out / f"{worker}.log").read_text(), worker


def test_the_spark_session_is_built_on_the_named_master_else_on_loopback():
    """What the started-cluster run shows with executors on the cluster's workers, read off the
    session's recipe (no JVM started): the breakage that drops the master is caught here cheaply."""
    from sdlab.data.engines import spark_builder

    assert spark_builder("spark://head:7077", 2)._options == {
        "spark.app.name": "sdlab-download",
        "spark.master": "spark://head:7077",
    }
    local = spark_builder(None, 3)._options
    assert local["spark.master"] == "local[3]" and local["spark.driver.bindAddress"] == "127.0.0.1"
    assert local["spark.ui.enabled"] == "false"


def test_cluster_needs_a_cluster_engine():
    with pytest.raises(ValueError, match="cluster: 'spark://head:7077' needs distributor pyspark or ray"):
        DownloadConfig(cluster="spark://head:7077")
    assert DownloadConfig(distributor="ray", cluster="auto").cluster == "auto"
