"""The `emoji_sets` source on the real npm packages (Twitter's and Google's sets, fetched by
`make install` into .cache/emoji-tarballs): records, images, the sha512 pin, `npm pack`
against a registry served on 127.0.0.1, and the split that holds out (concept, style) pairs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO
from PIL import Image
from support.local_site import LocalSite, Response

from sdlab.config import ConfigError, parse_params
from sdlab.data.dedupe import SplitRule, dedupe
from sdlab.data.records import DataError
from sdlab.sources import SOURCES
from sdlab.sources.emoji_sets import INTEGRITY

# `make install` fetches them here; a copy of the tree (the mutants') is pointed at the same folder
TARBALLS = Path(os.environ.get("SDLAB_EMOJI_TARBALLS") or REPO / ".cache" / "emoji-tarballs")
VERSION = "16.0.0"


def tarball(vendor: str):
    path = TARBALLS / f"emoji-datasource-{vendor}-{VERSION}.tgz"
    assert path.is_file(), f"{path} is missing: `make install` (the emoji-tarballs target) fetches it"
    return path


def scrape(tmp_path, **emoji_sets):
    settings = {"vendors": ["twitter", "google"], "tarballs": str(TARBALLS), **emoji_sets}
    params = parse_params({"scrape": {"source": "emoji_sets", "emoji_sets": settings}, "evaluate": {"judge": None}})
    stats: dict = {}
    records = SOURCES["emoji_sets"](params.scrape, tmp_path / "raw", tmp_path / "state", stats)[0]
    return records, stats


def test_records_name_each_concept_its_category_and_vendor_and_hold_the_packages_own_pngs(tmp_path):
    records, stats = scrape(tmp_path, max_concepts=60)
    assert stats["concepts"] == 60 and stats["images_per_vendor"] == {"twitter": 60, "google": 60}
    by_key = {r["key"]: r for r in records}
    grinning = by_key["emoji-twitter-1f600"]  # the first emoji of the list is always taken
    assert (grinning["name"], grinning["category"], grinning["subcategory"]) == (
        "grinning face",
        "Smileys & Emotion",
        "face-smiling",
    )
    assert grinning["emoji"] == "\U0001f600" and grinning["pair"] == "1f600/twitter"
    assert {r["concept"] for r in records if r["vendor"] == "twitter"} == {
        r["concept"] for r in records if r["vendor"] == "google"
    }  # one list of concepts, drawn by each vendor
    assert len({r["category"] for r in records}) >= 8  # spread over the list, not its first 60
    with tarfile.open(tarball("google"), "r:gz") as archive:
        member = archive.extractfile("package/img/google/64/1f600.png").read()
    assert hashlib.md5(open(by_key["emoji-google-1f600"]["path"], "rb").read()).digest() == hashlib.md5(member).digest()
    assert "Twemoji" in stats["licences"]["twitter"]


def test_the_judge_pool_holds_every_concept_left_out_and_none_of_the_chosen(tmp_path):
    import pyarrow.parquet as pq

    records, stats = scrape(tmp_path, max_concepts=60, judge_pool=True)
    pool = pq.read_table(tmp_path / "raw" / "judge_records.parquet").to_pylist()
    chosen = {r["concept"] for r in records}
    assert chosen.isdisjoint(r["concept"] for r in pool)  # the model's concepts are never the judge's extra data
    assert stats["judge_pool_images"] == len(pool) > 20 * len(records)
    assert {r["vendor"] for r in pool} == {"twitter", "google"} and all(Path(r["path"]).is_file() for r in pool)
    assert {r["category"] for r in pool} >= {r["category"] for r in records}
    plain, _ = scrape(tmp_path / "plain", max_concepts=60)
    assert not (tmp_path / "plain" / "raw" / "judge_records.parquet").exists()
    assert [r["key"] for r in plain] == [r["key"] for r in records]  # the model's records are unchanged


def white_16px(path) -> np.ndarray:
    image = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", image.size, "white")
    white.alpha_composite(image)
    return np.asarray(white.convert("RGB").resize((16, 16), Image.Resampling.BOX), float).ravel()


def test_the_noto_font_is_one_more_vendor_drawn_in_googles_style(tmp_path):
    records, stats = scrape(tmp_path, vendors=["google", "noto"], max_concepts=60)
    noto = {r["concept"]: r for r in records if r["vendor"] == "noto"}
    google = {r["concept"]: r for r in records if r["vendor"] == "google"}
    assert len(google) == 60 and len(noto) + sum(stats["skipped_by_reason"].values()) == 60 and len(noto) >= 55
    for concept, row in noto.items():  # one design: one style, and one pair the split keeps on one side
        assert row["key"] == f"emoji-noto-{concept}" and row["vendor"] == "noto"
        assert (row["style"], row["pair"], row["name"], row["category"]) == (
            "google",
            google[concept]["pair"],
            google[concept]["name"],
            google[concept]["category"],
        )
        assert Image.open(row["path"]).size == (64, 64)
    # the font's glyph is Google's drawing of the same concept: the nearest of the package's 60 images
    concepts = list(google)
    package = np.stack([white_16px(google[c]["path"]) for c in concepts])
    nearest = [concepts[int(np.argmin(((package - white_16px(r["path"])) ** 2).sum(1)))] for r in noto.values()]
    assert np.mean([n == c for n, c in zip(nearest, noto, strict=True)]) >= 0.9
    assert "Open Font License" in stats["licences"]["noto"]
    alone, stats = scrape(tmp_path / "alone", vendors=["noto"], max_concepts=60)  # named by Google's emoji.json
    assert stats["packages"] == [f"emoji-datasource-google@{VERSION}"] and [r["key"] for r in alone] == [
        r["key"] for r in records if r["vendor"] == "noto"
    ]
    with pytest.raises(DataError, match=r"scrape\.noto\.font: /nowhere\.ttf not found"):
        SOURCES["emoji_sets"](
            parse_params(
                {
                    "scrape": {
                        "source": "emoji_sets",
                        "noto": {"font": "/nowhere.ttf"},
                        "emoji_sets": {"vendors": ["noto"], "tarballs": str(TARBALLS)},
                    },
                    "evaluate": {"judge": None},
                }
            ).scrape,
            tmp_path / "raw3",
            tmp_path / "state",
            {},
        )


def test_skin_tones_add_their_own_concepts(tmp_path):
    plain, _ = scrape(tmp_path / "a", vendors=["twitter"])
    toned, _ = scrape(tmp_path / "b", vendors=["twitter"], skin_tones=True)
    names = {r["name"] for r in toned}
    assert "adult, medium-dark skin tone" in names and "adult, medium-dark skin tone" not in {r["name"] for r in plain}
    assert len(toned) > 1.8 * len(plain)


def test_a_tarball_that_is_not_the_published_one_is_refused(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray(tarball("twitter").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (mirror / tarball("twitter").name).write_bytes(data)
    with pytest.raises(DataError, match=r"emoji-datasource-twitter-16\.0\.0\.tgz: sha512 .* emoji-datasource-twitter@"):
        scrape(tmp_path, vendors=["twitter"], tarballs=str(mirror))
    assert not (tmp_path / "state" / "npm" / tarball("twitter").name).exists()  # nothing bad is cached


def test_a_version_without_a_pinned_sha_names_the_key(tmp_path):
    with pytest.raises(
        DataError, match=r"scrape\.emoji_sets\.integrity: no sha512 pinned for emoji-datasource-twitter@"
    ):
        scrape(tmp_path, vendors=["twitter"], version="15.1.2")
    with pytest.raises(ConfigError, match=r"scrape\.emoji_sets\.vendors\.0"):
        parse_params({"scrape": {"emoji_sets": {"vendors": ["myspace"]}}})


def registry_routes(vendor: str, base: str) -> dict[str, Response]:
    """An npm registry's two answers for one package: its packument and its tarball."""
    name, body = f"emoji-datasource-{vendor}", tarball(vendor).read_bytes()
    path = f"/{name}/-/{name}-{VERSION}.tgz"
    packument = {
        "name": name,
        "dist-tags": {"latest": VERSION},
        "versions": {
            VERSION: {
                "name": name,
                "version": VERSION,
                "dist": {"tarball": base + path, "integrity": INTEGRITY[f"{name}@{VERSION}"]},
            }
        },
    }
    return {f"/{name}": Response(json.dumps(packument).encode(), content_type="application/json"), path: Response(body)}


def test_npm_pack_fetches_once_into_the_persisted_state_and_reruns_offline(tmp_path, monkeypatch):
    """The real npm client against a registry on 127.0.0.1; the second scrape finds the
    tarball in the state folder and asks nothing (the registry is gone by then)."""
    assert shutil.which("npm"), "npm is missing (Debian's nodejs/npm)"
    for key in ("cache", "userconfig", "globalconfig"):
        monkeypatch.setenv(f"npm_config_{key}", str(tmp_path / f"npm-{key}"))
    monkeypatch.setenv("npm_config_update_notifier", "false")
    with LocalSite() as site:
        site.routes.update(registry_routes("twitter", site.url))
        monkeypatch.setenv("npm_config_registry", site.url + "/")
        first, _ = scrape(tmp_path, vendors=["twitter"], tarballs=None, max_concepts=5)
        assert site.requests[f"/emoji-datasource-twitter/-/emoji-datasource-twitter-{VERSION}.tgz"] == 1
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens: a fetch would fail
    again, _ = scrape(tmp_path, vendors=["twitter"], tarballs=None, max_concepts=5)
    assert [r["key"] for r in again] == [r["key"] for r in first]
    assert (tmp_path / "state" / "npm" / f"emoji-datasource-twitter-{VERSION}.tgz").is_file()
    assert not os.environ.get("npm_config_offline")


def test_the_split_holds_out_concept_style_pairs_and_whole_concepts(tmp_path):
    records, _ = scrape(tmp_path, max_concepts=400)
    index = pa.Table.from_pylist(
        [{**r, "status": "ok", "md5": hashlib.md5(r["key"].encode()).hexdigest()} for r in records]
    )
    rule = SplitRule(0.1, split_column="pair", unseen_column="concept", unseen_fraction=0.05)
    kept, _, stats = dedupe(index, rule)
    rows = kept.to_pylist()
    train_concepts = {r["concept"] for r in rows if r["split"] == "train"}
    val = [r for r in rows if r["split"] == "val"]
    unseen = [r for r in val if r["concept"] not in train_concepts]
    pairs = [r for r in val if r["concept"] in train_concepts]
    # held out whole by the rule, or (rarely) by both pairs' own draws
    assert len(pairs) > 40 and len(unseen) > 10 and 0.7 * len(unseen) < stats["val_unseen_group"] <= len(unseen)
    for r in unseen:  # a held-out concept is held out in every style
        assert all(o["split"] == "val" for o in rows if o["concept"] == r["concept"])
    for r in pairs:  # a held-out pair's concept was trained on in the other style
        assert any(o["concept"] == r["concept"] and o["split"] == "train" for o in rows)
    plain, _, _ = dedupe(index, 0.1)  # the default rule: by key, as before
    assert kept["key"].to_pylist() == plain["key"].to_pylist()
    from sdlab.data.dedupe import splits_for_keys

    assert plain["split"].to_pylist() == splits_for_keys(plain["key"], 0.1).to_pylist()
    with pytest.raises(DataError, match=r"dedupe\.unseen_column: the index has no column 'concepts'"):
        dedupe(index, SplitRule(0.1, unseen_column="concepts", unseen_fraction=0.1))
