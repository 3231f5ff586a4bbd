"""Reproduce a finished `repro_default.py --keep DIR` run with some params changed, in a copy
(or in place), and print stage times, samples/s, held-out loss and adherence.

    .venv/bin/python benchmarks/train_variant.py DIR --set train.lr=0.002 train.snr_gamma=5 [--copy OUT]
    .venv/bin/python benchmarks/train_variant.py DIR --set train.denoiser=transformer

DVC reruns only what the change reaches (train + evaluate for a `train.*` recipe value; encode's
text states too for `train.denoiser`), so every variant trains on the same latents from the
same VAE: the differences are the recipe's, not the data's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from sdlab.evaluation_files import read_evaluation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_default import DONE, run_dvc_repro  # noqa: E402


def set_values(params: dict, assignments: list[str]) -> dict:
    """`a.b.c=value` (value parsed as YAML) into the nested params."""
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        *path, last = key.split(".")
        section = params
        for name in path:
            section = section[name]
        if last not in section:
            sys.exit(f"--set {assignment}: {key} is not in params.yaml")
        section[last] = yaml.safe_load(value)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder (repro_default.py --keep)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="params to change")
    parser.add_argument("--copy", type=Path, help="reproduce in a copy of the run here (default: in place)")
    args = parser.parse_args()
    run = args.run
    if args.copy:
        shutil.rmtree(args.copy, ignore_errors=True)
        shutil.copytree(run, args.copy, symlinks=True)
        run = args.copy
    params = set_values(yaml.safe_load((run / "params.yaml").read_text()), args.set)
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output, total = run_dvc_repro(run, "repro-variant.log")
    print(f"{run} with {' '.join(args.set) or 'nothing changed'}\n\n| stage | wall time (s) |\n|---|---|")
    for name, seconds in DONE.findall(output):
        print(f"| {name} | {float(seconds):.1f} |")
    print(f"| **total** | **{total:.1f}** |\n")
    metrics = read_evaluation(run / "reports/evaluate")
    live = json.loads((run / "reports/train/live/metrics.json").read_text())
    print(
        f"- samples/s (last window): {live['train']['samples_per_s']:.0f}; held-out loss {metrics['heldout_loss']:.4f}"
    )
    for name, value in metrics.get("adherence", {}).items():
        print(
            f"- adherence {name}: {value:.3f} (judge on real val images: {metrics['judge_accuracy_on_real'][name]:.3f})"
        )


if __name__ == "__main__":
    main()
