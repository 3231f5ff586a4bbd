"""The qwen2.5-vl backend, run for real from a tiny random Qwen2.5-VL built offline."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from sdlab.caption import CAPTIONERS
from sdlab.caption.cache import CacheWriter, read_cache
from sdlab.caption.qwen_vl import GenerationSettings, QwenCaptioner, clean_caption, validate_caption
from sdlab.config import CaptionConfig
from sdlab.errors import DataError


def config(model: str, **overrides) -> CaptionConfig:
    base = dict(
        backend="qwen2.5-vl",
        model=model,
        batch_size=4,
        max_new_tokens=8,
        min_pixels=56 * 56,
        max_pixels=56 * 56,
        workers=1,
        threads_per_worker=1,
    )
    return CaptionConfig(**{**base, **overrides})


def run(rows, cfg, shards, cache):
    return CAPTIONERS["qwen2.5-vl"](pa.Table.from_pylist(rows), cfg, shards, cache)


def test_batched_captions_equal_unbatched_ones(tiny_qwen, qwen_images):
    from PIL import Image

    from sdlab.data.shards import load_images

    shards, rows = qwen_images
    pictures = [Image.fromarray(a) for a in load_images(shards, rows[:4])]
    titles = [r["title"] + "x" * i for i, r in enumerate(rows[:4])]  # different prompt lengths: real padding
    captioner = QwenCaptioner(GenerationSettings(tiny_qwen, "Describe {title}.", 8, 56 * 56, 56 * 56))
    batched = captioner.generate(pictures, titles)
    assert batched == [captioner.generate([p], [t])[0] for p, t in zip(pictures, titles, strict=True)]
    assert all(isinstance(text, str) for text in batched)


def test_cache_hits_on_rerun_and_only_new_images_are_captioned(tiny_qwen, qwen_images, tmp_path):
    shards, rows = qwen_images
    cfg = config(tiny_qwen, require_title=False, min_chars=0)  # accept what random weights write
    first = run(rows[:8], cfg, shards, tmp_path)
    assert first.stats["captioned_now"] == 8 and first.stats["cache_hits"] == 0
    assert all(not why for _, why in first.pairs())  # the model's own captions, not template fallbacks
    assert [c for c, _ in first.pairs()] != [r["caption"] for r in rows[:8]]
    # Plant a marker in the cache: a rerun that reads the cache returns it, one that recaptions cannot.
    part = next(tmp_path.glob("*.jsonl"))
    entries = [json.loads(line) for line in part.read_text().splitlines()]
    entries[0]["raw"] = "planted cached caption"
    part.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    again = run(rows[:8], cfg, shards, tmp_path)
    assert again.stats["captioned_now"] == 0 and again.stats["cache_hits"] == 8
    assert "planted cached caption" in [c for c, _ in again.pairs()]
    more = run(rows, cfg, shards, tmp_path)
    assert more.stats["captioned_now"] == 4 and more.pairs()[:8] == again.pairs()
    assert len(more.pairs()) == len(rows)
    changed = run(rows, config(tiny_qwen, prompt="Name the color of {title}."), shards, tmp_path)
    assert changed.stats["captioned_now"] == 12  # a new prompt recaptions everything
    longer = run(rows, config(tiny_qwen, max_new_tokens=9), shards, tmp_path)
    assert longer.stats["captioned_now"] == 12  # so do new generation settings


def test_a_title_change_recaptions_only_that_image(tiny_qwen, qwen_images, tmp_path):
    shards, rows = qwen_images
    run(rows, config(tiny_qwen), shards, tmp_path)
    renamed = [dict(r, title="blobrenamed") if i == 5 else r for i, r in enumerate(rows)]
    again = run(renamed, config(tiny_qwen), shards, tmp_path)
    assert again.stats["captioned_now"] == 1 and again.stats["cache_hits"] == 11
    no_title = config(tiny_qwen, prompt="Describe this emoji.")  # a prompt without {title}: titles do not count
    run(rows, no_title, shards, tmp_path)
    assert run(renamed, no_title, shards, tmp_path).stats["captioned_now"] == 0


def test_invalid_captions_fall_back_to_the_template_with_a_counted_reason(tiny_qwen, qwen_images, tmp_path):
    shards, rows = qwen_images
    result = run(rows, config(tiny_qwen), shards, tmp_path)  # random weights never write the title
    assert all(reason.startswith("invalid_") for _, reason in result.pairs())
    assert [c for c, _ in result.pairs()] == [r["caption"] for r in rows]  # the template caption, exact
    lenient = run(rows, config(tiny_qwen, require_title=False, min_chars=0), shards, tmp_path)
    assert lenient.stats["captioned_now"] == 0  # validation bounds do not recaption
    raw = read_cache(tmp_path)
    settings = GenerationSettings(tiny_qwen, CaptionConfig().prompt, 8, 56 * 56, 56 * 56)
    from sdlab.caption.qwen_pool import cache_keys

    keys = cache_keys(rows, settings, str(shards))
    assert [c for c, why in lenient.pairs() if not why] == [
        clean_caption(raw[keys[r["key"]]]["raw"]) for r, (_, why) in zip(rows, lenient.pairs(), strict=True) if not why
    ]


def test_two_cpu_workers_and_two_nodes_give_the_same_table_as_one(tiny_qwen, qwen_images, tmp_path):
    shards, rows = qwen_images
    cfg = config(tiny_qwen, require_title=False, min_chars=0)
    one = run(rows, cfg, shards, tmp_path / "one")
    two = run(rows, cfg.model_copy(update={"workers": 2}), shards, tmp_path / "two")
    assert one.pairs() == two.pairs()
    assert len(list((tmp_path / "two").glob("*.jsonl"))) == 2  # each worker wrote its own part

    # two nodes on one cache folder, node 1 started first: it captions its shard (the second of
    # three) and stops; node 0, started later, captions the other two and writes the table
    shared, node = tmp_path / "shared", {"num_nodes": 2, "workers": 1}
    with pytest.raises(DataError, match="8 image\\(s\\) not captioned yet, e.g. .* in 00000.tar: other nodes"):
        run(rows, cfg.model_copy(update={**node, "node_rank": 1}), shards, shared)
    assert {entry["image"] for entry in read_cache(shared).values()} == {
        r["key"] for r in rows if r["shard"] == "00001.tar"
    }
    later = run(rows, cfg.model_copy(update={**node, "node_rank": 0}), shards, shared)
    assert later.pairs() == one.pairs() and later.stats["captioned_now"] == 8
    lines = [json.loads(line)["image"] for part in shared.glob("*.jsonl") for line in part.read_text().splitlines()]
    assert sorted(lines) == sorted(r["key"] for r in rows)  # each image captioned once, by one node


def test_a_write_cut_short_by_a_kill_is_ignored(tmp_path):
    writer = CacheWriter(tmp_path, "part-000-1")
    writer.append([{"key": "a", "raw": "first"}])
    with open(writer.path, "a") as handle:
        handle.write('{"key": "b", "raw": "half a li')  # killed mid-write
    assert read_cache(tmp_path) == {"a": {"key": "a", "raw": "first"}}


def test_clean_and_validate():
    assert (
        clean_caption('assistant\n"blobhappy emoji with a round head."\nextra line')
        == "blobhappy emoji with a round head."
    )
    assert clean_caption("  ``  ") == ""
    assert validate_caption("", "blob", 5, 50, True) == "empty"
    assert validate_caption("blob", "blob", 5, 50, True) == "too_short"
    assert validate_caption("x" * 60, "", 5, 50, True) == "too_long"
    assert validate_caption("a happy emoji face", "blobhappy", 5, 50, True) == "missing_title"
    assert validate_caption("BlobHappy emoji face", "blobhappy", 5, 50, True) == ""


def test_caption_stage_writes_the_table_and_counts_fallbacks(tiny_qwen, qwen_images, tmp_path):
    import pyarrow.parquet as pq
    from conftest import run_stage

    shards, rows = qwen_images
    rows = [dict(r, caption=f" alt text {i} " if i % 2 else "") for i, r in enumerate(rows)]  # LAION-like
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "index.parquet")
    (tmp_path / "params.yaml").write_text(
        f"caption:\n  backend: qwen2.5-vl\n  model: {tiny_qwen}\n  batch_size: 6\n  max_new_tokens: 6\n"
        f"  min_pixels: 3136\n  max_pixels: 3136\n  workers: 1\n  keep_original: true\n"
    )
    args = [
        "--params",
        str(tmp_path / "params.yaml"),
        "--index",
        str(tmp_path / "index.parquet"),
        "--shards",
        str(shards),
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
        "--report",
        str(tmp_path / "report"),
    ]
    result = run_stage("caption.py", *args)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "out" / "captions.parquet")
    assert table.column_names == ["key", "caption", "backend", "reason", "model", "prompt_hash", "original_caption"]
    assert table["key"].to_pylist() == [r["key"] for r in rows]
    assert table["original_caption"].to_pylist() == [r["caption"].strip() for r in rows]  # beside the VLM's
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["captioned_now"] == 12 and stats["fallbacks"] == 12 and stats["original_captions"] == 6
    assert sum(stats["by_reason"].values()) == 12 and all(k.startswith("invalid_") for k in stats["by_reason"])
    assert run_stage("caption.py", *args).returncode == 0  # rerun: all from the cache
    assert json.loads((tmp_path / "report" / "stats.json").read_text())["cache_hits"] == 12
