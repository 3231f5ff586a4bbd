import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np

from sdlab.sources import SOURCES
from sdlab.sources.synthetic import SKIN_COLORS, draw_blob, sample_blob

CAPTION = re.compile(
    r"^blob\w+ emoji with a (round|tall|wide|square) head, (dot|oval|closed|big) eyes, "
    r"(smiling|frowning|open|flat) mouth, (happy|sad|angry|surprised|neutral) expression, "
    r"(\w+) skin color, (no action|blushing|crying|sweating), with a white background\.$"
)


def test_registry_names_the_synthetic_source():
    assert "synthetic" in SOURCES


def test_captions_are_exact_and_match_the_attribute_columns(blob_records):
    for record in blob_records:
        match = CAPTION.match(record["caption"])
        assert match, record["caption"]
        assert match.groups() == (
            record["head_shape"],
            record["eyes"],
            record["mouth"],
            record["expression"],
            record["skin_color"],
            record["action"],
        )


def test_at_least_eight_named_skin_colors():
    assert len(SKIN_COLORS) >= 8


SCRAPE_IN_A_FRESH_PROCESS = """
import hashlib, json, sys
from pathlib import Path
from sdlab.config import ScrapeConfig, SyntheticConfig
from sdlab.sources import SOURCES
out = Path(sys.argv[1])
[records] = SOURCES["synthetic"](ScrapeConfig(seed=3, synthetic=SyntheticConfig(
    num_images=40, image_px=64, duplicate_fraction=0.05)), out / "raw", out / "state", {})
print(json.dumps([[r["key"], hashlib.md5(open(r["path"], "rb").read()).hexdigest()] for r in records]))
"""


def test_same_seed_same_bytes_and_keys_in_any_process_and_keys_never_come_from_titles(blob_records, tmp_path):
    """Two fresh interpreters with different hash seeds (str hashing, set order) write the same
    keys and bytes as this one: nothing depends on per-process state."""
    here = [[r["key"], hashlib.md5(open(r["path"], "rb").read()).hexdigest()] for r in blob_records]
    assert len(here) == 40 and len({key for key, _ in here}) == 40
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", SCRAPE_IN_A_FRESH_PROCESS, str(tmp_path / hash_seed)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONHASHSEED=hash_seed),
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) == here
    assert all(record["title"] not in record["key"] for record in blob_records)


def test_planted_duplicates_are_byte_identical_to_an_earlier_image(blob_records):
    contents = [open(r["path"], "rb").read() for r in blob_records]
    repeated = [i for i, c in enumerate(contents) if c in contents[:i]]
    assert len(repeated) == 2


def test_blob_is_rgba_with_transparent_background_and_antialiased_edges():
    image = draw_blob(sample_blob(np.random.default_rng(0)), 64)
    alpha = np.asarray(image)[..., 3]
    assert image.mode == "RGBA" and image.size == (64, 64)
    assert alpha[0, 0] == 0 and alpha[32, 32] == 255
    assert ((alpha > 0) & (alpha < 255)).sum() > 20  # soft edge from 4x supersampling
