"""Aspect buckets end to end on real photos: `sdlab profile photos-tiny --workspace` in a fresh copy
of the project, on the IFCT 2017 food pictures cropped to 1:2 .. 2:1 (a local folder: nothing is
fetched). Download stores each photo at its bucket, encode keeps one latent shape per bucket,
train steps bucket by bucket, evaluate samples each prompt at its image's size, and the trained
model draws at two aspects."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, project_copy, sdlab_in
from PIL import Image
from support.photos import PICTURES_TARBALL, photo_folder

from sdlab.data.images import aspect_buckets, bucket_size, nearest_bucket
from sdlab.data.shards import load_image_list
from sdlab.evaluation_files import read_evaluation

pytestmark = pytest.mark.e2e
PICTURES = REPO / ".cache" / "emoji-tarballs" / PICTURES_TARBALL  # make install fetches it


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    work = project_copy(tmp_path_factory.mktemp("photos-e2e") / "sdlab", (REPO / "params.yaml").read_text())
    photos = photo_folder(PICTURES, work / ".cache" / "photos")
    (work / "photos.json").write_text(json.dumps(photos))
    run = sdlab_in(work, "profile", "photos-tiny", "--workspace")
    (work / "run.log").write_text(run.stdout)
    return work


def test_every_photo_is_stored_at_the_bucket_of_its_aspect(repo):
    photos = {Path(p["path"]).name: p for p in json.loads((repo / "photos.json").read_text())}
    index = [r for r in pq.read_table(repo / "data/images/index.parquet").to_pylist() if r["status"] == "ok"]
    assert len(index) == len(photos) == 542
    buckets = aspect_buckets(32, 8, 2.1)
    images = load_image_list(repo / "data/images/shards", index)
    for row, image in zip(index, images, strict=True):
        original = photos[Path(row["path"]).name]
        assert bucket_size(row["bucket"]) == nearest_bucket(original["width"], original["height"], buckets)
        assert (image.shape[1], image.shape[0]) == bucket_size(row["bucket"])  # the stored pixels
    assert Counter(r["bucket"] for r in index) == {
        "24x40": 218,
        "32x32": 108,
        "40x24": 216,
    }  # 1:2 + 2:3, 1:1, 3:2 + 2:1


def test_latents_and_training_keep_each_bucket_apart(repo):
    meta = json.loads((repo / "data/latents/meta.json").read_text())
    assert meta["buckets"] == {"24x40": [4, 20, 12], "32x32": [4, 16, 16], "40x24": [4, 12, 20]}
    stats = json.loads((repo / "reports/train/stats.json").read_text())
    assert stats["buckets"] == ["24x40", "32x32", "40x24"] and stats["buckets_not_drawn"] == {}
    assert json.loads((repo / "models/pipeline/buckets.json").read_text())["buckets"] == stats["buckets"]


def test_evaluate_samples_each_prompt_at_its_own_size_and_reports_each_bucket(repo):
    metrics = read_evaluation(repo / "reports/evaluate")
    assert set(metrics["heldout_loss_by_bucket"]) == {"24x40", "32x32", "40x24"}
    report = (repo / "reports/evaluate/report.html").read_text()
    assert "Each aspect bucket at its own size" in report
    for bucket in ("24x40", "32x32", "40x24"):
        assert f"<h3>{bucket} (" in report
    card = (repo / "models/pipeline/README.md").read_text()
    assert "Trained on aspect buckets (width x height): 24x40, 32x32, 40x24" in card


@pytest.mark.parametrize(("width", "height"), [(40, 24), (24, 40)])
def test_the_model_draws_at_two_aspects(repo, width, height):
    out = repo / f"wide-{width}x{height}.png"
    run = sdlab_in(
        repo,
        "generate",
        "--model",
        "models/pipeline",
        "--prompt",
        "a photo of fruits",
        "--steps",
        "2",
        "--width",
        str(width),
        "--height",
        str(height),
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stdout
    assert Image.open(out).size == (width, height)
