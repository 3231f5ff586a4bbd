"""Evaluate's two result files: `metrics.json`, the few numbers a person compares across runs
(a DVC metric: `dvc exp show` has a column per value), and `details.json`, what explains them
(per-timestep losses, the judges' own accuracy, chance, real-vs-real baselines)."""

from __future__ import annotations

from pathlib import Path

from sdlab.io import read_json, write_json

METRICS, DETAILS = "metrics.json", "details.json"
DETAIL_KEYS = (
    "heldout_loss_by_t",
    "chance",
    "judge_accuracy_on_real",
    "judge_accuracy_on_vae_reconstructions",
    "fid_blob_judge",
    "kid_blob_judge",
    "colour_histogram_distance_real_vs_real",
    "kid_vae_latent_real_vs_real",
)
LABEL_JUDGE_DETAIL_KEYS = (  # evaluate.judge: labels only
    "retrieval_at_5_real",
    "retrieval_at_5_chance",
    "unseen_concepts",
    "judged_group",
    "label_classes",
    "kid_label_judge_real_vs_real",
    "label_columns_not_judged",
)


def write_evaluation(folder: str | Path, results: dict) -> None:
    """Every result of the evaluate stage, split between the two files (with the mean adherence
    over attributes among the headline numbers when there is a judge)."""
    details = DETAIL_KEYS + LABEL_JUDGE_DETAIL_KEYS
    headline = {k: v for k, v in results.items() if k not in details}
    if results.get("adherence"):
        headline["adherence_mean"] = sum(results["adherence"].values()) / len(results["adherence"])
    write_json(Path(folder) / DETAILS, {k: v for k, v in results.items() if k in details})
    write_json(Path(folder) / METRICS, headline)


def read_evaluation(folder: str | Path) -> dict:
    """Both files as one mapping (what `write_evaluation` was given, plus adherence_mean)."""
    folder = Path(folder)
    for name in (METRICS, DETAILS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found (run the evaluate stage)")
    return {**read_json(folder / DETAILS), **read_json(folder / METRICS)}
