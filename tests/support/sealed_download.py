"""`download` on one engine, in a network namespace of its own, against a local image site.

    unshare --net -- python tests/support/sealed_download.py OUT --distributor pyspark [--started]

The namespace has a loopback interface only (brought up here), so nothing an engine starts (a
JVM, Ray's servers, their workers) can send a packet off this machine, whatever it binds to.
`--started` starts the engine's cluster first, with the commands README's runbook gives
(a Spark standalone master + 2 workers, or `ray start --head` + `ray start --address`), and
points `download.cluster` at it;
without it, `download.cluster` is null and sdlab starts a local session itself.
The stage runs as `dvc repro download` runs it (stages/download.py with a params file), into
OUT/images/ (index.parquet, shards/) and OUT/report/; beside them OUT/requests.json (path ->
times fetched), OUT/listening.json (every socket seen bound for listening during the run, from
/proc/net) and OUT/seconds.json (the stage's wall time, engine start-up included).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from sdlab.io import write_table  # noqa: E402
from support.local_site import LocalSite, Response, distinct_color, image_bytes  # noqa: E402

SITE_PORT = 8765  # fixed: the namespace is empty, and equal URLs make the engines' indexes comparable


def site_routes(images: int) -> dict[str, Response]:
    """`images` good images, then one of each failure a test counts (and a 404: no route)."""
    return {
        **{f"/e{i}.png": Response(image_bytes(distinct_color(i))) for i in range(images)},
        "/always-500.png": Response(image_bytes((9, 9, 9, 255)), fail_first=10**6),
        "/page.png": Response(b"<html>not an image</html>", content_type="text/html"),
        "/noai.png": Response(image_bytes((1, 2, 3, 255)), headers={"X-Robots-Tag": "noai"}),
    }


def bring_up_loopback() -> None:
    """`ip link set lo up` without iproute2; refuses to run outside a namespace of its own."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        raise SystemExit(f"not in a sealed network namespace (interfaces: {names}); run under `unshare --net`")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def listening_sockets() -> set[str]:
    """host:port of every TCP socket listening and every UDP socket bound, in this namespace."""
    found = set()
    for table, is_v6 in (("tcp", False), ("tcp6", True), ("udp", False), ("udp6", True)):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            local, _, state = line.split()[1:4]
            if table.startswith("tcp") and state != "0A":  # 0A: LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if is_v6:  # /proc prints each 32-bit word little-endian
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                host = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                host = socket.inet_ntop(socket.AF_INET, raw[::-1])
            found.add(f"{host}:{int(port, 16)}")
    return found


@contextlib.contextmanager
def watch_listening(into: set[str]):
    done = threading.Event()

    def sample():
        while not done.is_set():
            into.update(listening_sockets())
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        into.update(listening_sockets())


def wait_for(predicate, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise SystemExit(f"{what} did not happen in {timeout_s} s")
        time.sleep(0.2)


@contextlib.contextmanager
def spark_standalone(logs: Path):
    """README's runbook: a master on the head and a worker on every node (here 2, on 127.0.0.1)."""
    spark_class = shutil.which("spark-class")

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        return subprocess.Popen([spark_class, *args], stdout=log, stderr=subprocess.STDOUT)

    processes = [start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "7077")]
    try:
        for worker in ("worker0", "worker1"):
            processes.append(
                start(worker, "org.apache.spark.deploy.worker.Worker", "--cores", "1", "spark://127.0.0.1:7077")
            )
            joined = lambda log=logs / f"{worker}.log": "Successfully registered with master" in log.read_text()  # noqa: E731
            wait_for(joined, f"{worker} joined")
        yield "spark://127.0.0.1:7077"
    finally:
        for proc in reversed(processes):
            proc.terminate()
            proc.wait(timeout=60)


@contextlib.contextmanager
def ray_head_and_worker():
    """README's runbook: `ray start --head` on the head node, `ray start --address` on the others
    (here one more node on 127.0.0.1), every node reading one token file."""
    ray = shutil.which("ray")
    token = Path(tempfile.mkdtemp()) / "ray_token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    head = ["--head", "--node-ip-address", "127.0.0.1", "--port", "6379", "--num-cpus", "1"]
    subprocess.run([ray, "start", *head, "--include-dashboard", "false", "--disable-usage-stats"], **quiet)
    try:
        subprocess.run([ray, "start", "--address", "127.0.0.1:6379", "--num-cpus", "1"], **quiet)
        yield "127.0.0.1:6379"
    finally:
        subprocess.run([ray, "stop", "--force"], **quiet)


def run_stage(out: Path, records: list[dict], download: dict) -> float:
    """`dvc repro download`'s command, as a process; its wall seconds."""
    write_table(out / "records.parquet", pa.Table.from_pylist(records))
    (out / "params.yaml").write_text(yaml.safe_dump({"download": download}))
    command = [sys.executable, str(REPO / "stages" / "download.py"), "--params", str(out / "params.yaml")]
    command += ["--records", str(out / "records.parquet"), "--out", str(out / "images")]
    command += ["--cache", str(out / "cache"), "--report", str(out / "report")]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=out)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--distributor", choices=["multiprocessing", "pyspark", "ray"], required=True)
    parser.add_argument("--started", action="store_true", help="start the engine's cluster first")
    parser.add_argument("--images", type=int, default=18, help="good images on the site")
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every response")
    parser.add_argument("--replace", action="store_true", help="remove OUT first")
    args = parser.parse_args()
    if args.replace:
        shutil.rmtree(args.out, ignore_errors=True)
    bring_up_loopback()
    args.out.mkdir(parents=True)
    listening: set[str] = set()
    with contextlib.ExitStack() as stack:
        stack.enter_context(watch_listening(listening))
        routes = site_routes(args.images)
        site = stack.enter_context(LocalSite(routes, latency_s=args.latency_ms / 1000, port=SITE_PORT))
        cluster = None
        if args.started:  # the runbook's per-node setting (a local engine binds to loopback by itself)
            os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
            engine = spark_standalone(args.out) if args.distributor == "pyspark" else ray_head_and_worker()
            cluster = stack.enter_context(engine)
        download = {
            "image_px": 16,
            "shard_size": 4 if args.images < 100 else 1000,
            "processes": 2,
            "threads": 4 if args.images < 100 else 64,
            "retries": 0,
            "timeout_s": 5,
            "allow_private_networks": True,
            "distributor": args.distributor,
            "cluster": cluster,
        }
        rows = [
            {"key": f"r{i:03d}", "source": "test", "url": site.url + path, "path": "", "title": path, "caption": ""}
            for i, path in enumerate([*routes, "/gone.png"])
        ]
        seconds = run_stage(args.out, rows, download)
        requests = dict(site.requests)
    (args.out / "requests.json").write_text(json.dumps(requests, sort_keys=True))
    (args.out / "listening.json").write_text(json.dumps(sorted(listening)))
    (args.out / "seconds.json").write_text(json.dumps(seconds))


if __name__ == "__main__":
    main()
