"""Bad inputs through the real stage entry points: a clear message or a counted reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import png, profile_file, run_stage
from PIL import Image


def write_records(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def run_download(records, tmp_path):
    """The download stage on `records` with the tiny profile, outputs under `tmp_path`."""
    return run_stage(
        "download.py",
        "--params",
        str(profile_file("tiny", tmp_path)),
        "--records",
        records,
        "--out",
        str(tmp_path / "images"),
        "--cache",
        str(tmp_path / "cache"),
        "--report",
        str(tmp_path / "report"),
    )


def test_empty_dataset_after_filtering_is_a_clear_error_with_the_counts(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("filter:\n  blocklist: [blob]\n")
    records = write_records(
        tmp_path / "records.parquet",
        [
            {"key": f"k{i}", "source": "synthetic", "url": "", "path": "x.png", "title": "blobhappy", "caption": ""}
            for i in range(3)
        ],
    )
    result = run_stage(
        "filter.py",
        "--params",
        str(params),
        "--records",
        records,
        "--out",
        str(tmp_path / "out"),
        "--report",
        str(tmp_path / "report"),
    )
    assert result.returncode == 1
    assert "every one of 3 records was dropped" in result.stderr and "'blocklisted': 3" in result.stderr
    assert "Traceback" not in result.stderr
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["dropped_by_reason"]["blocklisted"] == 3  # the counts are written even on failure


def test_corrupt_image_is_counted_and_the_rest_are_packed(tmp_path):
    (tmp_path / "good.png").write_bytes(png(Image.new("RGBA", (20, 20), (0, 0, 255, 255))))
    (tmp_path / "bad.png").write_bytes(b"GIF89a-truncated")
    records = write_records(
        tmp_path / "records.parquet",
        [
            {
                "key": "good",
                "source": "folder",
                "url": "",
                "path": str(tmp_path / "good.png"),
                "title": "g",
                "caption": "",
            },
            {
                "key": "bad",
                "source": "folder",
                "url": "",
                "path": str(tmp_path / "bad.png"),
                "title": "b",
                "caption": "",
            },
        ],
    )
    result = run_download(records, tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["ok"] == 1 and stats["failed_by_reason"] == {"decode_error": 1}
    index = pq.read_table(tmp_path / "images" / "index.parquet").to_pylist()
    assert [(r["key"], r["status"], r["reason"]) for r in index] == [
        ("good", "ok", ""),
        ("bad", "failed", "decode_error"),
    ]


def test_all_images_unusable_is_a_clear_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    records = write_records(
        tmp_path / "records.parquet",
        [{"key": "bad", "source": "folder", "url": "", "path": str(tmp_path / "bad.png"), "title": "b", "caption": ""}],
    )
    result = run_download(records, tmp_path)
    assert result.returncode == 1
    assert "no image could be used: {'decode_error': 1}" in result.stderr and "Traceback" not in result.stderr


def test_missing_input_table_names_the_path(tmp_path):
    result = run_stage(
        "dedupe.py",
        "--params",
        str(profile_file("tiny", tmp_path)),
        "--index",
        str(tmp_path / "none.parquet"),
        "--shards",
        str(tmp_path),
        "--embeddings",
        str(tmp_path / "embeddings"),
        "--out",
        str(tmp_path / "o"),
        "--report",
        str(tmp_path / "r"),
    )
    assert result.returncode == 1
    assert "none.parquet: table not found" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_optional_package_is_one_line_but_a_broken_import_keeps_its_traceback(tmp_path, capsys):
    import argparse

    import pytest

    from sdlab.errors import MissingDependency
    from sdlab.stage import stage

    args = argparse.Namespace(params=str(profile_file("tiny", tmp_path)))

    def missing(args, params):
        raise MissingDependency("caption.engine: vllm needs the vllm environment (make vllm)")

    with pytest.raises(SystemExit) as exit_info:
        stage("caption")(missing)(args)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "caption: error: caption.engine: vllm needs the vllm environment (make vllm)\n"

    def broken(args, params):
        import sdlab.no_such_module  # noqa: F401  (a bug, not an install to fix)

    with pytest.raises(ModuleNotFoundError, match="sdlab.no_such_module"):  # propagates: the traceback is kept
        stage("train")(broken)(args)
