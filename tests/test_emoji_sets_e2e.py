"""The real-artwork path end to end: `sdlab profile emoji-sets-tiny --workspace` in a fresh copy
of the project, on Twitter's and Google's real packages (already in the persisted scrape state,
as after a first fetch: the run sends nothing off the machine)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, project_copy, sdlab_in
from test_emoji_sets import TARBALLS, tarball

from sdlab.evaluation_files import read_evaluation

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    work = project_copy(tmp_path_factory.mktemp("emoji-e2e") / "sdlab", (REPO / "params.yaml").read_text())
    state = work / "data" / "scrape_state" / "npm"
    state.mkdir(parents=True)
    for vendor in ("twitter", "google"):
        os.link(tarball(vendor), state / tarball(vendor).name)  # the persisted cache of an earlier fetch
    run = sdlab_in(work, "profile", "emoji-sets-tiny", "--workspace")
    (work / "run.log").write_text(run.stdout)
    return work


def test_the_corpus_is_the_packages_concepts_in_both_styles(repo):
    stats = json.loads((repo / "reports/scrape/stats.json").read_text())
    assert stats["concepts"] == 48 and stats["images_per_vendor"] == {"twitter": 48, "google": 48}
    captions = pq.read_table(repo / "data/captions/captions.parquet").to_pylist()
    assert "grinning face emoji, twitter style" in {c["caption"] for c in captions}
    assert TARBALLS.is_dir()


def test_val_holds_out_pairs_whose_concept_was_trained_and_whole_concepts(repo):
    rows = pq.read_table(repo / "data/dedup/index.parquet").to_pylist()
    train_pairs = {r["pair"] for r in rows if r["split"] == "train"}
    train_concepts = {r["concept"] for r in rows if r["split"] == "train"}
    val = [r for r in rows if r["split"] == "val"]
    assert not {r["pair"] for r in val} & train_pairs
    assert any(r["concept"] in train_concepts for r in val) and any(r["concept"] not in train_concepts for r in val)
    stats = json.loads((repo / "reports/dedupe/stats.json").read_text())
    assert stats["val_unseen_group"] > 0


def test_evaluate_reports_the_label_judges_and_retrieval_apart_for_unseen_concepts(repo):
    metrics = read_evaluation(repo / "reports/evaluate")
    judged = {"category", "subcategory", "style", "concept"}  # the label columns, and the concept's own head
    for name in ("adherence", "judge_accuracy_on_real", "judge_accuracy_on_vae_reconstructions", "chance"):
        assert set(metrics[name]) == judged, name
    assert 0 <= metrics["retrieval_at_5"] <= 1 and metrics["retrieval_at_5_chance"] < 0.5
    unseen = metrics["unseen_concepts"]
    assert unseen["judged_rows"] > 0 and set(unseen["adherence"]) == judged - {"concept"}  # no head knows them
    assert metrics["judged_rows"] + unseen["judged_rows"] == metrics["num_samples"]
    # the judge also learnt from 400 images of concepts the model never saw (the judge pool)
    assert metrics["judge_pool_images"] == 400
    pool = {r["key"] for r in pq.read_table(repo / "data/raw/judge_records.parquet").to_pylist()}
    assert pool and pool.isdisjoint(pq.read_table(repo / "data/latents/index.parquet")["key"].to_pylist())
    headline = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert "retrieval_at_5" in headline and "unseen_concepts" not in headline  # details.json holds it
    report = (repo / "reports/evaluate/report.html").read_text()
    val = pq.read_table(repo / "data/dedup/index.parquet").to_pylist()
    first_val_title = next(r["title"] for r in val if r["split"] == "val")
    assert "Prompt adherence" in report and "category" in report
    assert html.escape(first_val_title) in report  # the "one concept, every vendor" strips are titled by concept


def test_the_card_names_the_sets_and_their_licences(repo):
    card = (repo / "models/pipeline/README.md").read_text()
    assert "emoji_sets: the twitter, google emoji sets" in card
    assert "Twemoji: CC-BY 4.0" in card and "Noto Emoji: Apache-2.0" in card
    assert "retrieval@5 of the prompt's concept" in card
