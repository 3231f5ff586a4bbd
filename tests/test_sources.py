"""Sources beyond synthetic and discord: LAION metadata, a user's folder, Noto Color Emoji."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import png, profile, run_stage
from PIL import Image

from sdlab.config import FolderConfig, LaionColumns, LaionConfig, NotoConfig, ScrapeConfig, parse_params
from sdlab.data.records import DataError, write_records
from sdlab.sources import SOURCES


def laion_metadata(rows: int, seed: int = 0) -> pa.Table:
    """LAION-400M-like columns with varied values (nulls included)."""
    rng = np.random.default_rng(seed)
    width = rng.integers(64, 2048, rows).astype(float)
    width[::97] = np.nan
    return pa.table(
        {
            "SAMPLE_ID": np.arange(rows),
            "URL": [f"https://img{i % 7}.example.com/{i}.jpg" for i in range(rows)],
            "TEXT": [("a photo of a cat on a sofa " * (i % 13))[: (i * 37) % 400] for i in range(rows)],
            "WIDTH": pa.array(width, from_pandas=True),
            "HEIGHT": rng.integers(64, 2048, rows).astype(float),
            "similarity": rng.uniform(0.1, 0.45, rows),
            "punsafe": rng.uniform(0, 1, rows),
            "pwatermark": rng.uniform(0, 1, rows),
            "AESTHETIC_SCORE": rng.uniform(4, 8, rows),
            "LICENSE": ["?"] * rows,
        }
    )


def scrape(config: ScrapeConfig, tmp_path: Path) -> tuple[pa.Table, dict]:
    stats: dict = {}
    count, _ = write_records(
        tmp_path / "records.parquet", SOURCES[config.source](config, tmp_path, tmp_path / "state", stats)
    )
    return pq.read_table(tmp_path / "records.parquet"), stats


def test_laion_parquet_glob_is_streamed_and_mapped(tmp_path):
    meta = laion_metadata(3000)
    pq.write_table(meta.slice(0, 1800), tmp_path / "part-0.parquet", row_group_size=500)
    pq.write_table(meta.slice(1800), tmp_path / "part-1.parquet", row_group_size=500)
    config = ScrapeConfig(source="laion", laion=LaionConfig(metadata=str(tmp_path / "part-*.parquet"), batch_rows=256))
    records, stats = scrape(config, tmp_path / "out")
    assert records.num_rows == 3000 and stats == {"metadata_files": 2, "metadata_rows_read": 3000}
    assert records["key"][0].as_py() == "laion-0000000000" and records["key"][-1].as_py() == "laion-0000002999"
    assert records["url"].to_pylist() == meta["URL"].to_pylist()
    assert records["caption"].to_pylist() == meta["TEXT"].to_pylist() == records["title"].to_pylist()
    assert records["aesthetic"].to_pylist() == meta["AESTHETIC_SCORE"].to_pylist()
    assert records["width"].null_count == meta["WIDTH"].null_count > 0
    assert "LICENSE" not in records.column_names and records["path"].to_pylist() == [""] * 3000


def test_a_non_laion_layout_is_mapped_by_params(tmp_path):
    pq.write_table(
        pa.table(
            {
                "image_link": ["https://a/1.png", "https://a/2.png"],
                "alt": ["one cat", "two cats"],
                "w": [600, 700],
                "h": [600, 300],
            }
        ),
        tmp_path / "m.parquet",
    )
    columns = LaionColumns(url=["image_link"], caption=["alt"], width=["w"], height=["h"])
    config = ScrapeConfig(source="laion", laion=LaionConfig(metadata=str(tmp_path / "m.parquet"), columns=columns))
    records, _ = scrape(config, tmp_path / "out")
    assert records.select(["url", "caption", "width", "height"]).to_pylist() == [
        {"url": "https://a/1.png", "caption": "one cat", "width": 600.0, "height": 600.0},
        {"url": "https://a/2.png", "caption": "two cats", "width": 700.0, "height": 300.0},
    ]
    assert "aesthetic" not in records.column_names


def test_a_missing_required_column_is_named(tmp_path):
    pq.write_table(pa.table({"link": ["https://a/1.png"], "TEXT": ["x"]}), tmp_path / "m.parquet")
    config = ScrapeConfig(source="laion", laion=LaionConfig(metadata=str(tmp_path / "m.parquet")))
    with pytest.raises(DataError, match=r"no url column: none of \['URL', 'url'\].*scrape.laion.columns.url"):
        scrape(config, tmp_path / "out")
    with pytest.raises(DataError, match="matches no file"):
        scrape(ScrapeConfig(source="laion", laion=LaionConfig(metadata=str(tmp_path / "nope-*.parquet"))), tmp_path)


def test_a_hub_id_goes_through_datasets_and_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = ScrapeConfig(source="laion", laion=LaionConfig(metadata="laion/relaion2B-en-research-safe"))
    with pytest.raises(DataError, match=r"laion/relaion2B-en-research-safe.*`datasets` hub id failed"):
        scrape(config, tmp_path)


def test_laion_profile_filters_end_to_end_through_the_stages(tmp_path):
    meta = laion_metadata(4000, seed=1)
    pq.write_table(meta, tmp_path / "meta.parquet", row_group_size=1000)
    params = profile("laion")
    params["scrape"]["laion"]["metadata"] = str(tmp_path / "meta.parquet")
    params["filter"]["batch_rows"] = 700
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    assert (
        run_stage(
            "scrape.py",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(out / "raw"),
            "--state",
            str(out / "state"),
            "--report",
            str(out / "r-scrape"),
        ).returncode
        == 0
    )
    result = run_stage(
        "filter.py",
        "--params",
        str(tmp_path / "params.yaml"),
        "--records",
        str(out / "raw" / "records.parquet"),
        "--out",
        str(out / "filtered"),
        "--report",
        str(out / "r-filter"),
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "r-filter" / "stats.json").read_text())
    kept = pq.read_table(out / "filtered" / "records.parquet")
    dropped = pq.read_table(out / "filtered" / "dropped.parquet")
    # the same decision, row by row, written out in plain numpy
    m = {
        k: np.asarray(meta[k].to_numpy(zero_copy_only=False), dtype=float)
        for k in ["WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark", "AESTHETIC_SCORE"]
    }
    length = np.array([len(t) for t in meta["TEXT"].to_pylist()])
    side = np.fmin(m["WIDTH"], m["HEIGHT"])
    good = (
        (m["AESTHETIC_SCORE"] >= 6.5)
        & (m["similarity"] >= 0.28)
        & (m["punsafe"] < 0.5)
        & (m["pwatermark"] < 0.5)
        & (side >= 512)
        & (np.fmax(m["WIDTH"], m["HEIGHT"]) / side <= 2)
        & (length >= 20)
        & (length <= 300)
        & ~np.isnan(m["WIDTH"])
    )
    assert kept.num_rows == good.sum() > 0
    assert kept["url"].to_pylist() == [u for u, g in zip(meta["URL"].to_pylist(), good, strict=True) if g]
    assert stats["input"] == 4000 and stats["kept"] + stats["dropped"] == 4000 == kept.num_rows + dropped.num_rows
    assert sum(stats["dropped_by_reason"].values()) == stats["dropped"]
    assert stats["dropped_by_reason"]["aesthetic_below_min"] == int((m["AESTHETIC_SCORE"] < 6.5).sum())
    assert {"aesthetic", "similarity", "punsafe", "pwatermark", "width"} <= set(kept.column_names)  # carried on


def write_image(path: Path, color: tuple) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(Image.new("RGB", (20, 20), color)))


def test_folder_of_class_subfolders(tmp_path):
    root = tmp_path / "pets"
    write_image(root / "tabby_cat" / "a.png", (1, 2, 3))
    write_image(root / "tabby_cat" / "deep" / "b.png", (1, 2, 4))
    write_image(root / "dog" / "c.png", (5, 6, 7))
    (root / "dog" / "notes.txt").write_text("not an image")
    config = ScrapeConfig(source="folder", folder=FolderConfig(path=str(root), caption_template="a photo of a {label}"))
    records, stats = scrape(config, tmp_path / "out")
    rows = {r["file_name"]: r for r in records.to_pylist()}
    assert set(rows) == {"tabby_cat/a.png", "tabby_cat/deep/b.png", "dog/c.png"}
    assert rows["tabby_cat/a.png"]["caption"] == "a photo of a tabby cat" and rows["dog/c.png"]["title"] == "dog"
    assert stats["layout"] == "class_folders" and stats["skipped_by_reason"] == {"not_an_image_file": 1}
    assert all(Path(r["path"]).is_file() for r in rows.values())


def test_folder_with_metadata_jsonl_and_an_escape_attempt(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "x.png", (9, 9, 9))
    write_image(root / "sub" / "y.png", (8, 8, 8))
    write_image(tmp_path / "outside.png", (0, 0, 0))
    (root / "metadata.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"file_name": "x.png", "caption": "a grey square"},
                {"file_name": "sub/y.png", "text": "darker", "title": "y"},
                {"file_name": "../outside.png", "caption": "should not be read"},
            ]
        )
    )
    records, stats = scrape(ScrapeConfig(source="folder", folder=FolderConfig(path=str(root))), tmp_path / "out")
    assert records.select(["file_name", "caption", "title"]).to_pylist() == [
        {"file_name": "x.png", "caption": "a grey square", "title": "a grey square"},
        {"file_name": "sub/y.png", "caption": "darker", "title": "y"},
    ]
    assert stats["skipped_by_reason"] == {"outside_folder": 1}
    (root / "metadata.jsonl").unlink()
    (root / "metadata.csv").write_text("name,caption\nx.png,grey\n")
    with pytest.raises(DataError, match="needs a file_name column"):
        scrape(ScrapeConfig(source="folder", folder=FolderConfig(path=str(root))), tmp_path / "out2")


def test_noto_renders_real_emoji_and_counts_what_the_font_lacks(tmp_path):
    config = ScrapeConfig(source="noto", noto=NotoConfig(image_px=64))
    records, stats = scrape(config, tmp_path / "out")
    assert stats["emoji"] > 3900 and records.num_rows + sum(stats["skipped_by_reason"].values()) == stats["emoji"]
    assert records.num_rows > 3700 and stats["skipped_by_reason"]["glyph_missing"] > 0
    row = next(r for r in records.to_pylist() if r["emoji"] == "😀")
    assert row["title"] == "grinning face" and row["key"] == "noto-1f600"
    image = np.asarray(Image.open(row["path"]))
    assert (
        image.shape == (64, 64, 4) and image[..., 3].max() == 255 and image[0, 0, 3] == 0
    )  # drawn, transparent corner
    yellow = image[image[..., 3] == 255][:, :3].mean(axis=0)
    assert yellow[0] > 180 and yellow[1] > 140 and yellow[2] < 120  # the face is yellow
    assert len(set(records["key"].to_pylist())) == records.num_rows


def test_noto_without_the_font_says_how_to_install_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install fonts-noto-color-emoji"):
        scrape(ScrapeConfig(source="noto", noto=NotoConfig(font=str(tmp_path / "none.ttf"))), tmp_path)


@pytest.mark.parametrize(("name", "source"), [("laion", "laion"), ("noto", "emoji_sets")])
def test_profiles_validate(name, source):
    params = parse_params(profile(name))
    assert params.scrape.source == source
