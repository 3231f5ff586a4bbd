"""The streamed train stage against the in-memory one it replaced, side by side on the default profile.

    .venv/bin/python benchmarks/train_streamed_vs_in_memory.py [--baseline c3a2426] [--steps 120] [--pairs 3]

Needs the default profile's data up to `vae` (`make repro`, or `dvc repro vae caption`).
The baseline is the last commit whose train stage loaded every latent and caption state into
RAM (`--baseline`, checked out here as a temporary git worktree). Each side encodes the same
images, captions and VAE with its own encode stage (its own latents format), then the two
train stages run in turn, A B A B ..., each with its own params.yaml (the same values; the
baseline's schema lacks the new keys), validation off,
`--steps` steps), and each run's steady samples/s is read from its dvclive curve
(`train/samples_per_s`, first window dropped). Prints each pair's ratio and the median.
Target: streamed / in-memory >= 0.95.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, script: str, args: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(tree / "stages" / script), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"{tree.name}/{script} failed:\n{result.stderr[-3000:]}")


def samples_per_s(live: Path) -> float:
    with open(live / "plots" / "metrics" / "train" / "samples_per_s.tsv") as handle:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(handle, delimiter="\t")][1:]
    return statistics.mean(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="c3a2426")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO, help="a reproduced copy of the project (default: here)")
    args = parser.parse_args()
    data = args.data.resolve()
    for needed in ("data/dedup/index.parquet", "data/captions/captions.parquet", "models/vae/config.json"):
        if not (data / needed).exists():
            raise SystemExit(f"{needed} not found: run `make repro` (or `dvc repro vae caption`) first")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            sides = {"streamed": REPO, "in_memory": baseline}
            for name, tree in sides.items():
                work = tmp / name
                work.mkdir()
                params = yaml.safe_load((tree / "params.yaml").read_text())  # each side's own schema
                params["train"].update(
                    max_steps=args.steps, validation_every_steps=0, checkpoint_every_steps=args.steps
                )
                (work / "params.yaml").write_text(yaml.safe_dump(params))
                run(
                    tree,
                    "encode.py",
                    [
                        "--params",
                        "params.yaml",
                        "--index",
                        str(data / "data/dedup/index.parquet"),
                        "--captions",
                        str(data / "data/captions/captions.parquet"),
                        "--shards",
                        str(data / "data/images/shards"),
                        "--vae",
                        str(data / "models/vae"),
                        "--out",
                        "latents",
                        "--report",
                        "encode-report",
                    ],
                    work,
                )
            ratios = []
            for pair in range(args.pairs):
                rates = {}
                for name, tree in sides.items():
                    work = tmp / name
                    live = work / f"live-{pair}"
                    run(
                        tree,
                        "train.py",
                        [
                            "--params",
                            "params.yaml",
                            "--latents",
                            "latents",
                            "--vae",
                            str(data / "models/vae"),
                            "--checkpoints",
                            f"ckpt-{pair}",
                            "--live",
                            str(live),
                            "--out",
                            f"pipeline-{pair}",
                            "--report",
                            f"report-{pair}",
                        ],
                        work,
                    )
                    rates[name] = samples_per_s(live)
                ratios.append(rates["streamed"] / rates["in_memory"])
                print(
                    f"pair {pair + 1}: streamed {rates['streamed']:.1f} samples/s, in-memory "
                    f"{rates['in_memory']:.1f} samples/s, ratio {ratios[-1]:.3f}",
                    flush=True,
                )
            print(f"median ratio streamed / in-memory: {statistics.median(ratios):.3f} (target >= 0.95)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
