"""The engine img2dataset spreads a fetch over: this machine's processes, a Spark session or a Ray cluster.

`download.distributor` picks it and `download.cluster` says where it runs:
- `multiprocessing`: `download.processes` spawned processes here; `cluster` must be null.
- `pyspark`: `cluster` is a Spark master URL (`spark://head:7077`, `yarn`, `k8s://...`); null starts
  `local[processes]` on this machine, bound to 127.0.0.1 with no web UI.
- `ray`: `cluster` is a Ray address (`auto` on a node of a running cluster, `head:6379`); null starts
  a one-node cluster here with `processes` CPUs on 127.0.0.1, no dashboard.
img2dataset itself uses the session/cluster that is open when it is called (its distributor.py), so
opening it here is how the master, the bind address and the Python of the workers are chosen. Every
node needs this project's environment at the same path (workers import `sdlab` to fetch) and the
download cache on storage they all see (workers write the fetched shards there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from sdlab.config import DownloadConfig

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def engine(cfg: DownloadConfig) -> Iterator[None]:
    """While open, img2dataset's `distributor=cfg.distributor` runs on the engine `cfg` names."""
    if cfg.distributor == "pyspark":
        with spark_session(cfg.cluster, cfg.processes):
            yield
    elif cfg.distributor == "ray":
        with ray_cluster(cfg.cluster, cfg.processes):
            yield
    else:
        yield


def spark_builder(master: str | None, processes: int):
    """The session's recipe (nothing started yet): `master`, or `local[processes]` bound to
    loopback with no web UI."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("sdlab-download").master(master or f"local[{processes}]")
    if master is None:
        for key, value in {
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.enabled": "false",
        }.items():
            builder = builder.config(key, value)
    return builder


@contextlib.contextmanager
def spark_session(master: str | None, processes: int) -> Iterator[object]:
    """A SparkSession on `master`, or `local[processes]` on loopback; stopped on exit."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers import sdlab: this environment's Python
    if master is None:
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)  # the JVM's own address and every UI it starts
    spark = spark_builder(master, processes).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark
    finally:
        spark.stop()


@contextlib.contextmanager
def ray_cluster(address: str | None, processes: int) -> Iterator[None]:
    """Connected to the Ray cluster at `address`, or to a one-node cluster started here on
    loopback with `processes` CPUs; disconnected (and the local one shut down) on exit."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage to its makers otherwise
    import ray

    if address is None:
        ray.init(
            num_cpus=processes,
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
