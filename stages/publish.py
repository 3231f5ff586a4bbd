"""DVC stage `publish`: the model people use, `models/pipeline`: the trained pipeline folder
with its model card (README.md, Hugging Face format) and evaluate's sample grid beside it.

A stage of its own because the card holds evaluate's metrics and evaluate reads the trained
folder: DVC lets no stage write inside another stage's output.
"""

import os
import shutil
from pathlib import Path

from sdlab.card import DATA_STAGES, SAMPLES, Facts, model_card
from sdlab.evaluation_files import read_evaluation
from sdlab.io import atomic_dir, first_rows, read_json
from sdlab.stage import parse_args, stage


def link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows one (DVC's commit turns it into a copy of its own)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@stage("publish")
def main(args, params):
    trained, reports = Path(args.pipeline), Path(args.reports)
    if not (trained / "model_index.json").is_file():
        raise FileNotFoundError(f"{trained}: not a diffusers pipeline folder (run the train stage)")
    stats = {
        name: read_json(reports / name / "stats.json")
        for name in (*DATA_STAGES, "vae", "train")
        if (reports / name / "stats.json").is_file()
    }
    samples = reports / "evaluate" / SAMPLES
    if not samples.is_file():
        raise FileNotFoundError(f"{samples}: not found (run the evaluate stage)")
    files = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    val = first_rows(args.index, 1, "split", "val", ["caption"])["caption"].to_pylist()
    card = model_card(Facts(params, stats, read_evaluation(reports / "evaluate"), files, *val[:1]))
    with atomic_dir(args.out) as temp:
        shutil.copytree(trained, temp, dirs_exist_ok=True, copy_function=link_or_copy)
        shutil.copy2(samples, temp / SAMPLES)
        card.save(temp / "README.md")
    print(f"publish: {args.out} ({len(files)} files from {trained}, README.md model card, {SAMPLES})")


if __name__ == "__main__":
    main(parse_args(__doc__, "pipeline", "index", "reports", "out"))
