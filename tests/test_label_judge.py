"""The label judges on real artwork (Twitter's and Google's emoji from the npm packages): they
read real val images, score a perfect "generator" near their accuracy on real images, and fall
to chance when the images do not belong to the rows they are judged against."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from support.fixture_cache import cached, fixture_key
from test_emoji_sets import TARBALLS, scrape

import sdlab.data.dedupe as dedupe_module
import sdlab.data.images as images_module
from sdlab.data.dedupe import SplitRule, dedupe
from sdlab.data.images import composite_on_white, fit_square
from sdlab.judge import AttributeClassifier, head_loss, train_classifier
from sdlab.judge import labels as judge_labels
from sdlab.label_judge import (
    classes_of,
    judge_labelled_samples,
    retrieval_at_k,
    train_label_judge,
    train_label_judges,
)
from sdlab.models.vae import to_tensor
from sdlab.sources import emoji_sets

COLUMNS = ["category", "style"]


def split_corpus(folder: Path):
    records, _ = scrape(folder, max_concepts=400)
    index = pa.Table.from_pylist(
        [{**r, "status": "ok", "md5": hashlib.md5(r["key"].encode()).hexdigest()} for r in records]
    )
    rows = dedupe(index, SplitRule(0.15, split_column="pair", unseen_column="concept", unseen_fraction=0.05))[0]
    rows = rows.to_pylist()
    images = np.stack([np.asarray(fit_square(composite_on_white(Image.open(r["path"])), 32)) for r in rows])
    is_val = np.array([r["split"] == "val" for r in rows])
    return (
        images[~is_val],
        [r for r in rows if r["split"] == "train"],
        images[is_val],
        [r for r in rows if r["split"] == "val"],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 concepts x 2 styles at 32 px, split by (concept, style) pair with 5% of concepts unseen
    (kept on disk by the code that reads and splits the packages, and the packages' names)."""
    code = (split_corpus, scrape, emoji_sets, dedupe_module, images_module)
    key = fixture_key(code, [], sorted(p.name for p in TARBALLS.glob("*.tgz")))
    return cached("label-corpus", key, lambda: split_corpus(tmp_path_factory.mktemp("emoji")))


@pytest.fixture(scope="module")
def classifier(corpus):
    train, train_rows, _, _ = corpus
    # kept on disk by its training code and inputs: the mutants of the reading side reuse it
    code = (train_label_judge, classes_of, train_classifier, AttributeClassifier, judge_labels, head_loss, to_tensor)
    key = fixture_key(code, [train], {"rows": train_rows, "columns": COLUMNS, "steps": 150, "seed": 0})
    return cached("label-judge", key, lambda: train_label_judge(train, train_rows, COLUMNS, steps=150, seed=0))


@pytest.fixture(scope="module")
def judged(corpus, classifier):
    train, train_rows, val, val_rows = corpus

    def judge(generated):
        return judge_labelled_samples(
            [classifier],
            generated,
            val_rows,
            real_val=val,
            real_train=train,
            train_rows=train_rows,
            concept_column="concept",
        )

    shuffled = val[np.random.default_rng(0).permutation(len(val))]
    return judge(val), judge(shuffled)


def test_the_judges_read_real_val_images(judged):
    perfect, _ = judged
    assert perfect["judged_rows"] > 40 and perfect["unseen_concepts"]["judged_rows"] > 10
    assert perfect["judged_group"] == "held_out_pairs"
    real = perfect["judge_accuracy_on_real"]
    print(*judged)  # for the log: what the judges read here
    # 680 train images at 32 px: far above chance, far from the full corpus's judge
    assert real["style"] > perfect["chance"]["style"] + 0.1
    assert real["category"] > perfect["chance"]["category"] + 0.25
    # the real images of a held-out pair find their concept drawn in the other style
    assert perfect["retrieval_at_5_real"] > 3 * perfect["retrieval_at_5_chance"]


def test_with_no_val_concept_trained_on_the_headline_is_the_unseen_concepts(corpus):
    """One image per concept (the Noto font): no held-out pair exists, every val prompt names an
    unseen concept; those are judged as the headline, and said to be. The judge's quality does
    not matter here (5 steps): which rows and heads are scored does."""
    train, train_rows, val, val_rows = corpus
    val_concepts = {r["concept"] for r in val_rows}
    keep = [i for i, r in enumerate(train_rows) if r["concept"] not in val_concepts]
    kept_rows = [train_rows[i] for i in keep]
    judges = train_label_judges(train[keep], kept_rows, [*COLUMNS, "concept"], steps=5, seed=0)
    scores = judge_labelled_samples(
        judges, val, val_rows, real_val=val, real_train=train[keep], train_rows=kept_rows, concept_column="concept"
    )
    assert scores["judged_group"] == "unseen_concepts" and scores["judged_rows"] == len(val_rows)
    assert "unseen_concepts" not in scores  # not twice
    # the concept head cannot name an unseen concept: not scored (it would read 0 by construction)
    assert set(scores["adherence"]) == set(scores["chance"]) == set(COLUMNS)
    assert scores["adherence"] == scores["judge_accuracy_on_real"]  # the real val images judged as samples
    assert 0 < scores["retrieval_at_5_chance"] < scores["retrieval_at_5"]


def test_a_perfect_generator_scores_what_the_judge_reads_on_real_images(judged):
    perfect, _ = judged
    assert perfect["adherence"] == perfect["judge_accuracy_on_real"]
    assert perfect["retrieval_at_5"] >= perfect["retrieval_at_5_real"]  # it may find itself
    # its samples for val half A are real A: KID against real B is the real-vs-real baseline exactly
    assert perfect["kid_label_judge"] == perfect["kid_label_judge_real_vs_real"]


def test_images_judged_against_other_rows_score_near_chance(judged):
    perfect, shuffled = judged
    assert shuffled["judge_accuracy_on_real"] == perfect["judge_accuracy_on_real"]  # the same judge
    assert shuffled["adherence"]["category"] < perfect["adherence"]["category"] - 0.15
    assert shuffled["adherence"]["category"] < shuffled["chance"]["category"] + 0.15
    assert shuffled["retrieval_at_5"] < perfect["retrieval_at_5"] / 3


def test_retrieval_counts_a_hit_only_for_the_querys_own_concept():
    import torch

    pool = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert retrieval_at_k(queries, ["a", "b"], pool, ["a", "b", "c", "d"], k=1) == 1.0
    assert retrieval_at_k(queries, ["b", "a"], pool, ["a", "b", "c", "d"], k=1) == 0.0
    assert retrieval_at_k(queries, ["a", "b"], pool, ["a", "b", "c", "d"], self_index=[0, 1], k=1) == 0.0


def test_the_judge_pool_teaches_the_label_heads_and_never_the_concept_head(corpus):
    """Pool rows (concepts the model never trains on) add their categories and styles to the
    heads' training, not their concepts: the concept head still names train concepts only. A
    pool read with the concept too (the wrong rows for that head) would add classes."""
    train, train_rows, val, val_rows = corpus
    pool_rows = [dict(r, concept="pool-" + r["concept"], subcategory="pool-only") for r in val_rows]
    heads = [*COLUMNS, "subcategory", "concept"]
    judge = train_label_judge(
        train, train_rows, heads, steps=5, seed=0, pool=(val, pool_rows), pool_columns=[*COLUMNS, "subcategory"]
    )
    assert "pool-only" in judge.classes["subcategory"]  # learnt from the pool
    assert not any(c.startswith("pool-") for c in judge.classes["concept"])  # never from it
    assert set(judge.classes["concept"]) == {r["concept"] for r in train_rows}
    without = train_label_judge(train, train_rows, heads, steps=5, seed=0)
    assert "pool-only" not in without.classes["subcategory"]


def test_the_columns_a_pool_teaches_get_a_judge_of_their_own(corpus):
    """With a pool, style (taught by it) is read by a second classifier trained on the pool too;
    category and concept by one that never saw a pool image (its classes are the train rows')."""
    train, train_rows, val, val_rows = corpus
    pool_rows = [dict(r, category="pool-only", style="pool-style") for r in val_rows]
    heads = [*COLUMNS, "concept"]
    judges = train_label_judges(
        train, train_rows, heads, steps=5, seed=0, pool=(val, pool_rows), pool_columns=["style"]
    )
    assert [list(j.classes) for j in judges] == [["category", "concept"], ["style"]]
    assert "pool-only" not in judges[0].classes["category"] and "pool-style" in judges[1].classes["style"]
    # no pool: one judge, every head
    assert [list(j.classes) for j in train_label_judges(train, train_rows, heads, steps=5, seed=0)] == [heads]
    scores = judge_labelled_samples(
        judges, val, val_rows, real_val=val, real_train=train, train_rows=train_rows, concept_column="concept"
    )
    assert set(scores["adherence"]) == set(heads) and scores["label_classes"]["style"] == 3
