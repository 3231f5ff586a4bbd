"""Switch a finished `repro_default.py --keep DIR` run to another denoiser and reproduce what
that changes (encode rewrites the text states, train, evaluate); print stage times and metrics.

    .venv/bin/python benchmarks/switch_denoiser.py DIR [--denoiser transformer]

The VAE latents and everything upstream are reused, so both denoisers train on the same
latents from the same VAE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_default import DONE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--denoiser", default="transformer")
    args = parser.parse_args()
    params = yaml.safe_load((args.run / "params.yaml").read_text())
    params["train"]["denoiser"] = args.denoiser
    (args.run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(args.run / "src"))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=args.run, env=env, capture_output=True, text=True
    )
    total = time.perf_counter() - started
    (args.run / f"repro-{args.denoiser}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"dvc repro failed, see {args.run / f'repro-{args.denoiser}.log'}")
    print("| stage | wall time (s) |\n|---|---|")
    for name, seconds in DONE.findall(result.stdout + result.stderr):
        print(f"| {name} | {float(seconds):.1f} |")
    print(f"| **total** | **{total:.1f}** |\n")
    metrics = json.loads((args.run / "reports/evaluate/metrics.json").read_text())
    live = json.loads((args.run / "reports/train/live/metrics.json").read_text())
    print(
        f"- samples/s (last window): {live['train']['samples_per_s']:.0f}; held-out loss {metrics['heldout_loss']:.4f}"
    )
    for name, value in metrics.get("adherence", {}).items():
        print(
            f"- adherence {name}: {value:.3f} (judge on real val images: {metrics['judge_accuracy_on_real'][name]:.3f})"
        )


if __name__ == "__main__":
    main()
