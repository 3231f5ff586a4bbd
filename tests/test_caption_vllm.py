"""`caption.engine: vllm`: Qwen2.5-VL on vLLM, in the environment `make vllm` builds (`make test`
builds it first), gives the transformers path's captions byte for byte (greedy, the tiny model)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import REPO

from sdlab.caption import CAPTIONERS
from sdlab.caption.cache import read_cache
from sdlab.config import CaptionConfig, ConfigError
from sdlab.errors import WorkerError

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def config(model: str, **overrides) -> CaptionConfig:
    base = dict(
        backend="qwen2.5-vl",
        model=model,
        prompt="Describe this emoji named {title} in one sentence.",
        batch_size=4,
        max_new_tokens=12,
        min_pixels=56 * 56,
        max_pixels=56 * 56,
        min_chars=0,
        require_title=False,  # keep what random weights write: the raw strings are compared
        workers=1,
        threads_per_worker=2,
    )
    return CaptionConfig(**{**base, **overrides})


def caption(rows, cfg, shards, cache):
    return CAPTIONERS["qwen2.5-vl"](pa.Table.from_pylist(rows), cfg, shards, cache)


def test_vllm_captions_equal_the_transformers_captions_byte_for_byte(tiny_qwen, qwen_images, tmp_path):
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} missing: `make vllm` builds vLLM's environment (`make test` does it first)")
    shards, rows = qwen_images
    transformers = caption(rows, config(tiny_qwen), shards, tmp_path / "transformers")
    vllm = caption(rows, config(tiny_qwen, engine="vllm", vllm_python=str(VLLM_PYTHON)), shards, tmp_path / "vllm")
    assert vllm.stats["captioned_now"] == 12
    raw_t = {e["image"]: e["raw"] for e in read_cache(tmp_path / "transformers").values()}
    raw_v = {e["image"]: e["raw"] for e in read_cache(tmp_path / "vllm").values()}
    assert raw_v == raw_t  # every generation, byte for byte
    assert len(set(raw_t.values())) > 1 and all(raw_t.values())  # real, differing generations, not empty ones
    assert vllm.pairs() == transformers.pairs()
    again = caption(rows, config(tiny_qwen, engine="vllm", vllm_python="/nowhere/python"), shards, tmp_path / "vllm")
    assert again.stats["cache_hits"] == 12  # the cache is the engine's too: nothing to caption, no engine started


def test_a_missing_vllm_environment_is_a_clear_error_before_any_worker_starts(tiny_qwen, qwen_images, tmp_path):
    shards, rows = qwen_images
    cfg = config(tiny_qwen, engine="vllm", vllm_python=str(tmp_path / "no-venv/bin/python"))
    with pytest.raises(ConfigError, match=r"caption.vllm_python: .*no-venv/bin/python not found.*make vllm"):
        caption(rows, cfg, shards, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.jsonl"))


def test_a_failing_vllm_worker_fails_the_stage_and_shows_why(qwen_images, tmp_path, capfd):
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} missing: `make vllm` builds vLLM's environment (`make test` does it first)")
    shards, rows = qwen_images
    missing = str(tmp_path / "no-such-model")
    cfg = config(missing, engine="vllm", vllm_python=str(VLLM_PYTHON))
    with pytest.raises(WorkerError, match="worker 0 .* exited with") as failed:
        caption(rows, cfg, shards, tmp_path / "cache")
    assert f"caption worker 0 on vLLM ({VLLM_PYTHON}) exited with" in str(failed.value)
    assert "no-such-model" in str(failed.value)  # the end of vLLM's own output: why it failed
    assert "no-such-model" in capfd.readouterr().err  # and its output was passed on as it came
