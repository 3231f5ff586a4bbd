"""Run `dvc repro` of a params file in a fresh temp copy of the repo and report, per
stage, its wall time, plus training samples/s and the evaluation metrics.

    .venv/bin/python benchmarks/repro_default.py [--params params.yaml] [--profile noto] [--keep DIR]

Prints a markdown table for BENCHMARKS.md. Absolute times on a shared 2-core machine are
noisy; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdlab.evaluation_files import read_evaluation

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^\S+ \S+ (\w+) INFO: done in ([\d.]+) s$", re.M)


def copy_repo(params: Path, work: Path, profile: str | None = None) -> None:
    for name in ["dvc.yaml", "stages", "src", "configs", ".dvc", ".gitignore"]:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)
    shutil.copy(params, work / "params.yaml")
    if profile:  # configs/<profile>.yaml over it, as `sdlab profile --workspace` would run it
        import yaml

        from sdlab.profiles import load_profile

        (work / "params.yaml").write_text(yaml.safe_dump(load_profile(profile, work).composed, sort_keys=False))
    for command in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"],
    ):
        subprocess.run(["git", *command], cwd=work, check=True)


def run_dvc_repro(work: Path, log_name: str) -> tuple[str, float]:
    """`dvc repro` in `work` with this venv's python and `work/src` first on the path; returns
    (its output, seconds). The output goes to `work/log_name`; a failure exits naming it."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(work / "src"))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, capture_output=True, text=True)
    total = time.perf_counter() - started
    (work / log_name).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"dvc repro failed, see {work / log_name}")
    return result.stdout + result.stderr, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--profile", default=None, help="a profile in configs/ laid over --params (e.g. noto)")
    parser.add_argument("--keep", default=None, help="run in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="sdlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_repo(Path(args.params), work, args.profile)
    output, total = run_dvc_repro(work, "repro.log")
    stage_times = {name: float(seconds) for name, seconds in DONE.findall(output)}
    metrics = read_evaluation(work / "reports/evaluate")
    live = json.loads((work / "reports/train/live/metrics.json").read_text())
    vae = json.loads((work / "reports/vae/stats.json").read_text())
    print("| stage | wall time (s) |\n|---|---|")
    for name, seconds in stage_times.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **dvc repro total** | **{total:.1f}** |\n")
    print(f"- VAE val PSNR: {vae.get('val_psnr_db', float('nan')):.1f} dB, scaling factor {vae['scaling_factor']:.4f}")
    print(f"- training throughput (last logging window): {live['train']['samples_per_s']:.0f} samples/s")
    print(f"- held-out denoising loss: {metrics['heldout_loss']:.4f}")
    for name, value in metrics.get("adherence", {}).items():
        judge = metrics["judge_accuracy_on_real"][name]
        print(f"- adherence {name}: {value:.3f} (judge on real val images: {judge:.3f})")
    if "retrieval_at_5" in metrics:  # evaluate.judge: labels
        group = metrics.get("judged_group", "held_out_pairs").replace("_", " ")
        print(f"- chance: {metrics['chance']}; {group} judged: {metrics['judged_rows']}")
        print(
            f"- retrieval@5: {metrics['retrieval_at_5']:.3f} (real val images: {metrics['retrieval_at_5_real']:.3f}, "
            f"chance {metrics['retrieval_at_5_chance']:.3f})"
        )
        if unseen := metrics.get("unseen_concepts"):
            print(
                f"- unseen concepts ({unseen['judged_rows']} rows): adherence {unseen['adherence']}, "
                f"retrieval@5 {unseen['retrieval_at_5']:.3f}"
            )
    for name in (
        "vae_reconstruction_psnr_db",
        "colour_histogram_distance",
        "colour_histogram_distance_real_vs_real",
        "kid_vae_latent",
        "kid_vae_latent_real_vs_real",
    ):
        if name in metrics:
            print(f"- {name}: {metrics[name]:.4f}")
    print(f"\nrun folder: {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
