import numpy as np
import pytest
from support.fixture_cache import cached, fixture_key

from sdlab.data.images import composite_on_white, fit_square
from sdlab.distribution import fid_kid
from sdlab.judge import (
    AttributeClassifier,
    FeatureExtractor,
    accuracy,
    head_loss,
    judge_samples,
    train_blob_judge,
    train_classifier,
)
from sdlab.judge import labels as judge_labels
from sdlab.models.vae import to_tensor
from sdlab.sources.synthetic import ATTRIBUTES, draw_blob, sample_blob


def blobs(seed: int, count: int, px: int = 32):
    drawn = [sample_blob(np.random.default_rng([seed, i])) for i in range(count)]
    images = np.stack([np.asarray(fit_square(composite_on_white(draw_blob(b, 128)), px)) for b in drawn])
    return images, [{a: getattr(b, a) for a in ATTRIBUTES} for b in drawn]


@pytest.fixture(scope="module")
def judge():
    train, train_rows = blobs(1, 300)
    # every attribute >= 0.97 on real val at 1 and 2 threads (eyes 0.99 of 200); the profile
    # trains 300 steps on up to 4,000 images: this is the cheapest judge the tests still trust
    # (kept on disk by its training code and inputs: the mutants of judge_samples reuse it)
    code = (train_blob_judge, train_classifier, AttributeClassifier, judge_labels, head_loss, to_tensor)
    key = fixture_key(code, [train], {"rows": train_rows, "steps": 150, "seed": 0})
    return cached("blob-judge", key, lambda: train_blob_judge(train, train_rows, steps=150, seed=0))


def test_classifier_reads_attributes_of_real_images_and_not_of_noise(judge):
    val, rows = blobs(2, 200)
    real = accuracy(judge, val, rows)
    assert real["eyes"] > 0.8 and real["head_shape"] > 0.8
    noise = np.random.default_rng(0).integers(0, 256, val.shape, dtype=np.uint8)
    assert all(score < 0.45 for score in accuracy(judge, noise, rows).values())


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(judge):
    val, _ = blobs(2, 120)
    extractor = FeatureExtractor(judge)
    fid_self, _ = fid_kid(extractor, val, val)
    assert abs(fid_self) < 1e-3
    rng = np.random.default_rng(1)
    scores = [
        fid_kid(extractor, val, np.clip(val + rng.normal(0, s, val.shape), 0, 255).astype(np.uint8))
        for s in (10, 40, 100)
    ]
    assert scores[0][0] < scores[1][0] < scores[2][0]
    assert scores[0][1] < scores[2][1]  # KID too


def test_judge_samples_scores_the_generated_images_against_their_own_rows(judge):
    """The adherence table rests on this: judging the real images instead of the generated
    ones, or pairing images with the wrong rows, must show. Here the "generated" images are
    the real val images rolled by one, each beside another image's prompt."""

    val, rows = blobs(2, 64)
    scores = judge_samples(judge, np.roll(val, 1, axis=0), rows, real_val=val)
    for name, chance in scores["chance"].items():
        assert scores["judge_accuracy_on_real"][name] >= 0.85, (name, scores["judge_accuracy_on_real"])
        assert scores["adherence"][name] <= chance + 0.2, (name, scores["adherence"])
    assert abs(scores["fid_blob_judge"]) < 1e-2  # the same set of images as the real val set
