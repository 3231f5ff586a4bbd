"""The tiny profile run in a temp copy of the repo, then `dvc repro` after edits: the whole DAG, for real."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, dvc, project_copy, sdlab_in
from huggingface_hub import ModelCard
from PIL import Image

from sdlab.config import SyntheticConfig, read_yaml
from sdlab.evaluation_files import DETAIL_KEYS, read_evaluation
from sdlab.sources.synthetic import duplicate_sources, near_copy_sources

STAGES = ["scrape", "filter", "download", "embed", "dedupe", "caption", "vae", "encode", "train", "evaluate", "publish"]
pytestmark = pytest.mark.e2e


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git+dvc copy of the project (params.yaml as shipped), reproduced once with the tiny
    profile as a user runs it: `sdlab profile tiny --workspace` (a DVC experiment in the workspace)."""
    work = project_copy(tmp_path_factory.mktemp("e2e") / "sdlab", (REPO / "params.yaml").read_text())
    first = sdlab_in(work, "profile", "tiny", "--workspace")
    (work / "first_run.log").write_text(first.stdout)
    return work


def test_every_stage_ran_and_is_locked(repo):
    assert ran((repo / "first_run.log").read_text()) == STAGES
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)


def test_data_contracts_hold(repo):
    records = pq.read_table(repo / "data/raw/records.parquet")
    filtered = pq.read_table(repo / "data/filtered/records.parquet")
    index = pq.read_table(repo / "data/images/index.parquet")
    kept = pq.read_table(repo / "data/dedup/index.parquet")
    duplicates = pq.read_table(repo / "data/dedup/duplicates.parquet")
    captions = pq.read_table(repo / "data/captions/captions.parquet")
    assert records.num_rows == 160
    assert index.num_rows == filtered.num_rows  # rows in index = rows in filtered records, always
    assert set(index["status"].to_pylist()) <= {"ok", "failed"}
    assert duplicates.num_rows == 8  # 5% planted copies
    assert not set(duplicates["key"].to_pylist()) & set(kept["key"].to_pylist())
    # the tiny profile's 5% planted re-uploads (resized, JPEG): each removed, naming its original
    removed = pq.read_table(repo / "data/dedup/removed.parquet").to_pylist()
    config = SyntheticConfig(num_images=160, image_px=64, duplicate_fraction=0.05, near_duplicate_fraction=0.05)
    near = near_copy_sources(config, 0, duplicate_sources(160, 0.05, 0))
    found = {r["key"]: r["duplicate_of"] for r in removed}
    assert len(near) >= 5 and {f"syn-{i:06d}": found.get(f"syn-{i:06d}") for i in near} == {
        f"syn-{i:06d}": f"syn-{o:06d}" for i, o in near.items()
    }
    assert all(r["reason"] == "near_duplicate_phash" and r["distance"] <= 2 for r in removed)
    dedupe_stats = json.loads((repo / "reports/dedupe/stats.json").read_text())
    assert dedupe_stats["near_duplicate_phash"] == len(removed)
    assert not set(found) & set(kept["key"].to_pylist())
    assert kept.num_rows + duplicates.num_rows + len(removed) == index.num_rows
    embedded = pq.read_table(repo / "data/embeddings/index.parquet")
    assert sorted(embedded["key"].to_pylist()) == sorted(
        index.filter(pc.equal(index["status"], "ok"))["key"].to_pylist()
    )
    assert set(kept["split"].to_pylist()) == {"train", "val"}
    assert captions["key"].to_pylist() == kept["key"].to_pylist()
    assert captions["caption"].to_pylist() == kept["caption"].to_pylist()  # template == ground truth
    meta = json.loads((repo / "data/latents/meta.json").read_text())
    assert meta["latent_shape"] == [4, 8, 8] and meta["images"] == kept.num_rows
    assert json.loads((repo / "models/vae/config.json").read_text())["scaling_factor"] == meta["scaling_factor"]
    for stage in ["scrape", "filter", "download", "embed", "dedupe", "caption", "vae", "encode", "train"]:
        assert json.loads((repo / f"reports/{stage}/stats.json").read_text())


def test_training_checkpointed_and_exported_a_loadable_pipeline(repo):
    stats = json.loads((repo / "reports/train/stats.json").read_text())
    assert stats["final_step"] == 20
    runs = list((repo / "models/checkpoints").iterdir())
    assert len(runs) == 1 and runs[0].name == stats["run"]
    assert sorted(p.name for p in runs[0].iterdir()) == ["recipe.json", "step-0000010", "step-0000020"]
    live = json.loads((repo / "reports/train/live/metrics.json").read_text())
    assert live["step"] == 20 and live["train"]["loss"] > 0
    code = (
        "import sys; from diffusers import StableDiffusionPipeline as P; "
        "p = P.from_pretrained(sys.argv[1]); print(p(['blobhappy emoji'], num_inference_steps=2, "
        "output_type='np').images.shape)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code, str(repo / "models/pipeline")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 16, 16, 3)" in result.stdout


def test_evaluation_metrics_and_grid(repo):
    metrics = read_evaluation(repo / "reports/evaluate")
    headline = json.loads((repo / "reports/evaluate/metrics.json").read_text())  # what dvc exp show lists
    assert not set(headline) & set(DETAIL_KEYS) and set(DETAIL_KEYS) <= set(metrics)
    assert headline["adherence_mean"] == pytest.approx(sum(headline["adherence"].values()) / 6)
    assert metrics["num_samples"] == 8 and metrics["heldout_loss"] > 0
    assert len(metrics["heldout_loss_by_t"]) == 4
    assert set(metrics["adherence"]) == {"skin_color", "head_shape", "expression", "eyes", "mouth", "action"}
    assert set(metrics["judge_accuracy_on_real"]) == set(metrics["adherence"])
    assert metrics["judge_accuracy_on_real"]["skin_color"] == 1.0
    assert metrics["fid_blob_judge"] > 0 and "fid_inception" not in metrics  # a substitute, named as one
    assert (repo / "reports/evaluate/samples.png").stat().st_size > 1000
    page = (repo / "reports/evaluate/report.html").read_text()
    # grid, sweep, one strip per attribute, real vs generated, VAE reconstructions, dedupe's near pairs
    assert page.count("data:image/png;base64,") == 2 + 6 + 2 + 1 and "heldout_loss" in page and "<polyline" in page
    overview = page[: page.index("Samples for held-out prompts")]  # what a person sees first
    dedupe = json.loads((repo / "reports/dedupe/stats.json").read_text())
    curation = overview[overview.index("What the training data lost to curation") :]
    assert f"{dedupe['kept']:,} of {dedupe['input']:,} downloaded rows kept" in curation
    assert f"{dedupe['duplicates']} removed as exact duplicates (MD5)" in curation
    assert f"{dedupe['near_duplicate_phash']} removed as near-duplicates by perceptual hash" in curation
    assert 'alt="near-duplicate pairs"' in curation
    assert "steps of batch" in overview and "judge on real val images" in overview and "chance" in overview
    assert all(f"only {a} varies" in overview for a in metrics["adherence"])
    assert metrics["chance"]["skin_color"] == 1 / 8 and metrics["chance"]["expression"] == 1 / 5
    assert set(metrics["judge_accuracy_on_vae_reconstructions"]) == set(metrics["adherence"])
    assert metrics["vae_reconstruction_psnr_db"] > 5
    assert 0 < metrics["colour_histogram_distance_real_vs_real"] < 1 and 0 < metrics["colour_histogram_distance"] <= 1
    assert {"kid_vae_latent", "kid_vae_latent_real_vs_real"} <= set(metrics)
    for stage in ["scrape", "filter", "download", "dedupe", "caption"]:  # contact sheets of the data stages
        from PIL import Image

        assert Image.open(repo / f"reports/{stage}/sheet.png").size[0] >= 4 * 120
    shown = dvc(repo, "metrics", "show").stdout
    assert "heldout_loss" in shown and "dropped_by_reason" in shown


def card_draws_like_the_cli(published: Path, tmp_path: Path) -> None:
    """The card's how-to, as written: its Python snippet and its `sdlab generate` command (the
    folder path put in) draw the same pixels."""
    text = (published / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    snippet = snippet.replace("path/to/this/folder", str(published)).replace("out.png", str(tmp_path / "py.png"))
    command = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    command = command.replace("path/to/this/folder", str(published)).replace("out.png", str(tmp_path / "cli.png"))
    words = shlex.split(command)
    assert words[:2] == ["sdlab", "generate"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for argv in ([sys.executable, "-c", snippet], [sys.executable, "-m", "sdlab.cli", *words[1:]]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    from_python, from_cli = (np.asarray(Image.open(tmp_path / name)) for name in ("py.png", "cli.png"))
    assert from_python.shape == from_cli.shape == (16, 16, 3) and from_python.std() > 0
    assert np.array_equal(from_python, from_cli)


def test_published_model_is_the_trained_folder_with_a_card_of_this_run(repo, tmp_path):
    trained, published = repo / "models/trained", repo / "models/pipeline"
    weights = {p.relative_to(trained): p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    assert weights and all((published / name).read_bytes() == data for name, data in weights.items())
    assert (published / "samples.png").read_bytes() == (repo / "reports/evaluate/samples.png").read_bytes()
    assert {p.relative_to(published) for p in published.rglob("*") if p.is_file()} == {
        *weights,
        Path("README.md"),
        Path("samples.png"),
    }
    card = ModelCard.load(published / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert "trained-from-scratch" in card.data.tags and card.data.base_model is None
    stats = {s: json.loads((repo / f"reports/{s}/stats.json").read_text()) for s in ("scrape", "dedupe", "train")}
    metrics = read_evaluation(repo / "reports/evaluate")
    rows = {line.split("|")[1].strip(): line for line in card.text.splitlines() if line.startswith("| ")}
    assert f"{stats['scrape']['records']:,} records" in rows["scrape"]
    assert f"| {stats['dedupe']['kept']:,} |" in rows["dedupe"]
    assert f"{stats['dedupe']['duplicates']:,} exact duplicates" in rows["dedupe"]
    assert f"{stats['train']['final_step']:,} of global batch {stats['train']['global_batch']}" in rows["steps"]
    assert f"{metrics['heldout_loss']:.4f}" in rows["held-out denoising loss"]
    for attribute, value in metrics["adherence"].items():
        assert f"| {attribute} | {value:.3f} | {metrics['judge_accuracy_on_real'][attribute]:.3f} |" in card.text
    card_draws_like_the_cli(published, tmp_path)


def test_second_repro_reruns_nothing(repo):
    assert ran(dvc(repo, "repro").stdout) == []


def test_a_dedupe_threshold_edit_reruns_dedupe_and_never_the_embedding_pass(repo):
    edit_params(repo, "dedupe", phash_bits=3)
    changed = json.loads(dvc(repo, "status", "--json").stdout)
    assert "dedupe" in changed and "embed" not in changed and "download" not in changed
    edit_params(repo, "dedupe", phash_bits=2)  # as the tiny profile has it: nothing to rerun
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}


def edit_params(repo: Path, section: str, **values) -> None:
    params = read_yaml(repo / "params.yaml")  # as DVC wrote it (YAML 1.2)
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_more_encode_workers_change_no_byte_and_rerun_nothing_downstream(repo):
    before = {p: p.read_bytes() for p in sorted((repo / "data/latents").rglob("*")) if p.is_file()}
    edit_params(repo, "encode", workers=2)
    assert ran(dvc(repo, "repro").stdout) == ["encode"]
    after = {p: p.read_bytes() for p in sorted((repo / "data/latents").rglob("*")) if p.is_file()}
    assert after == before


def test_an_embed_rerun_keeps_every_finished_shard_file(repo):
    """The embedding pass is the expensive one at scale: a rerun of the stage (here a worker
    count, which no fingerprint holds) must find its per-shard files in place, not deleted by
    DVC before the stage runs, and so rewrite none and rerun nothing downstream."""
    files = {p: p.stat().st_mtime_ns for p in (repo / "data/embeddings/shards").glob("*.safetensors")}
    assert files
    edit_params(repo, "embed", workers=2)
    assert ran(dvc(repo, "repro").stdout) == ["embed"]
    assert {p: p.stat().st_mtime_ns for p in (repo / "data/embeddings/shards").glob("*.safetensors")} == files


def test_changing_only_the_guidance_reruns_evaluate_and_the_card(repo):
    trained = {p: p.stat().st_mtime_ns for p in (repo / "models/trained").rglob("*")}
    edit_params(repo, "evaluate", guidance_scale=3.0)
    assert ran(dvc(repo, "repro").stdout) == ["evaluate", "publish"]
    assert {p: p.stat().st_mtime_ns for p in (repo / "models/trained").rglob("*")} == trained
    card = (repo / "models/pipeline/README.md").read_text()
    assert "guidance_scale=3," in card and "--guidance 3 " in card


def test_raising_max_steps_continues_the_run_with_one_curve(repo):
    first = json.loads((repo / "reports/train/stats.json").read_text())
    edit_params(repo, "train", max_steps=30)
    assert ran(dvc(repo, "repro").stdout) == ["train", "evaluate", "publish"]
    stats = json.loads((repo / "reports/train/stats.json").read_text())
    assert stats["run"] == first["run"] and stats["start_step"] == 20 and stats["final_step"] == 30
    steps = [
        line.split("\t")[0]
        for line in (repo / "reports/train/live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    ]
    assert steps == [str(s) for s in range(5, 31, 5)]  # every logged step once, before and after the resume


def test_changing_only_train_lr_reruns_only_train_and_evaluate(repo):
    first = json.loads((repo / "reports/train/stats.json").read_text())
    edit_params(repo, "train", lr=5e-4)
    output = dvc(repo, "repro").stdout
    assert ran(output) == ["train", "evaluate", "publish"]
    stats = json.loads((repo / "reports/train/stats.json").read_text())
    assert stats["start_step"] == 0 and stats["run"] != first["run"]  # a new run, not resumed
    assert (repo / "models/checkpoints" / first["run"]).is_dir()  # and the old run is kept


def test_switching_to_the_transformer_rewrites_only_text_states_and_exports_pixart(repo, tmp_path):
    latents = {p: p.read_bytes() for p in sorted((repo / "data/latents/shards").glob("*")) if p.is_file()}
    text = {p: p.read_bytes() for p in sorted((repo / "data/latents/text").glob("*")) if p.is_file()}
    edit_params(repo, "train", denoiser="transformer")
    assert ran(dvc(repo, "repro").stdout) == ["encode", "train", "evaluate", "publish"]
    assert {p: p.read_bytes() for p in latents} == latents  # the VAE latents are kept
    assert all(p.read_bytes() != before for p, before in text.items())  # states re-encoded with the mask
    assert json.loads((repo / "data/latents/meta.json").read_text())["text_mask"] is True
    index = json.loads((repo / "models/pipeline/model_index.json").read_text())
    assert index["_class_name"] == "PixArtAlphaPipeline"
    stats = json.loads((repo / "reports/train/stats.json").read_text())
    assert stats["denoiser"] == "transformer" and stats["start_step"] == 0 and stats["final_step"] == 30
    metrics = read_evaluation(repo / "reports/evaluate")
    assert metrics["heldout_loss"] > 0 and set(metrics["adherence"]) == set(metrics["judge_accuracy_on_real"])
    assert (
        "from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline"
        in (repo / "models/pipeline/README.md").read_text()
    )
    card_draws_like_the_cli(repo / "models/pipeline", tmp_path)
