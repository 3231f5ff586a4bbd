"""The download stage's fetch on each img2dataset engine, side by side: multiprocessing, a local
Spark session, a local Ray cluster (each started by sdlab, `download.cluster: null`).

    .venv/bin/python benchmarks/download_engines.py [--images 2000] [--latency-ms 50] [--rounds 3]

Each run is tests/support/sealed_download.py in a network namespace of its own (`unshare --net`,
as root): a local image site with `--latency-ms` added to every response, 2 processes x 64
threads, shards of 1,000, the download stage run as `dvc repro download` runs it. Engines take
turns (A B C A B C ...) so drift hits all alike; the medians are reported: the whole sealed run
(site included), and the stage's process alone (engine start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("multiprocessing", "pyspark", "ray")


def run_once(engine: str, out: Path, images: int, latency_ms: float) -> tuple[float, float]:
    command = ["unshare", "--net", "--", sys.executable, str(REPO / "tests" / "support" / "sealed_download.py")]
    command += [str(out), "--distributor", engine, "--images", str(images), "--latency-ms", str(latency_ms)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    result = subprocess.run([*command, "--replace"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{result.stderr[-3000:]}")
    stats = json.loads((out / "report" / "stats.json").read_text())
    if stats["ok"] != images:
        raise SystemExit(f"{engine}: {stats['ok']} of {images} images ok: {stats}")
    return wall, json.loads((out / "seconds.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for engine in ENGINES:
                times[engine].append(run_once(engine, Path(tmp) / engine, args.images, args.latency_ms))
                print(f"round {round_ + 1} {engine}: wall {times[engine][-1][0]:.1f} s", file=sys.stderr)
    base = statistics.median(seconds for _, seconds in times["multiprocessing"])
    print(f"{args.images} images, {args.latency_ms:g} ms latency, {args.rounds} rounds (medians)")
    print("| engine | sealed run (s) | download stage (s) | images/s | stage vs multiprocessing |")
    print("|---|---|---|---|---|")
    for engine in ENGINES:
        wall = statistics.median(w for w, _ in times[engine])
        seconds = statistics.median(s for _, s in times[engine])
        print(f"| {engine} | {wall:.1f} | {seconds:.1f} | {args.images / seconds:.0f} | {seconds / base:.2f}× |")


if __name__ == "__main__":
    main()
