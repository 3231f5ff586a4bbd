"""Captioners, chosen by `caption.backend` from one registry.

A captioner maps (the kept index as an Arrow table, config, shards folder, cache folder)
to a `CaptionResult`: a caption and a reason per row (reason '' for a normal caption,
otherwise why it is a fallback), as columns, plus counts for stats.json and any extra
per-row columns of the captions table (e.g. the model that wrote each caption).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdlab.caption import template
from sdlab.config import CaptionConfig
from sdlab.workers import node_split


@dataclass
class CaptionResult:
    captions: pa.Array | list[str]
    reasons: pa.Array | list[str]
    stats: dict = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        """(caption, reason) per row."""
        return list(
            zip(
                pa.array(self.captions, pa.string()).to_pylist(),
                pa.array(self.reasons, pa.string()).to_pylist(),
                strict=True,
            )
        )

    @classmethod
    def of_pairs(cls, pairs: list[tuple[str, str]], **kwargs) -> CaptionResult:
        return cls([caption for caption, _ in pairs], [reason for _, reason in pairs], **kwargs)


def _template_rows(rows: pa.Table, cfg: CaptionConfig) -> list[dict]:
    """Only the columns the templates name, as dicts (the template fills one row at a time)."""
    fields = set(template.template_fields(cfg.template)) | set(template.template_fields(cfg.fallback_template))
    return rows.select([c for c in rows.column_names if c in fields]).to_pylist()


def caption_template(rows: pa.Table, cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    return CaptionResult.of_pairs(template.caption_rows(_template_rows(rows, cfg), cfg))


def source_captions(rows: pa.Table) -> pa.Array:
    """The caption each row's source brought (LAION's alt text), trimmed; '' where it has none."""
    if "caption" not in rows.column_names:
        return pa.array([""] * rows.num_rows, pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(rows["caption"].combine_chunks().cast(pa.string()), ""))


def caption_original(rows: pa.Table, cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    """Keep the caption the source brought (LAION's alt text), vectorised; the template where it is empty."""
    original = source_captions(rows)
    empty = pc.equal(original, "")
    where = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
    captions = original
    if len(where):
        fallbacks = template.caption_rows(_template_rows(rows.take(pa.array(where)), cfg), cfg)
        captions = pc.replace_with_mask(original, empty, pa.array([c for c, _ in fallbacks], pa.string()))
    reasons = pc.if_else(empty, "no_original_caption", "")
    return CaptionResult(captions, reasons)


def caption_qwen(rows: pa.Table, cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    from sdlab.caption.qwen_pool import caption_missing
    from sdlab.caption.qwen_vl import GenerationSettings, clean_caption, validate_caption

    rows = rows.to_pylist()

    settings = GenerationSettings(cfg.model, cfg.prompt, cfg.max_new_tokens, cfg.min_pixels, cfg.max_pixels)
    cache, keys, captioned_now = caption_missing(
        rows,
        settings,
        str(shards_dir),
        str(cache_dir),
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        threads_per_worker=cfg.threads_per_worker,
        precision=cfg.precision,
        node=node_split(cfg.num_nodes, cfg.node_rank, "caption"),
        engine=cfg.engine,
        python=cfg.vllm_python,
    )
    out = []
    for row in rows:
        title = str(row.get("title") or "")
        caption = clean_caption(cache[keys[row["key"]]]["raw"])
        reason = validate_caption(caption, title, cfg.min_chars, cfg.max_chars, cfg.require_title)
        out.append((template.caption_record(row, cfg)[0], f"invalid_{reason}") if reason else (caption, ""))
    stats = {
        "model": cfg.model,
        "prompt_hash": settings.prompt_hash,
        "captioned_now": captioned_now,
        "cache_hits": len(rows) - captioned_now,
    }
    columns = {"model": [cfg.model] * len(rows), "prompt_hash": [settings.prompt_hash] * len(rows)}
    return CaptionResult.of_pairs(out, stats=stats, columns=columns)


CAPTIONERS: dict[str, Callable[[pa.Table, CaptionConfig, Path, Path], CaptionResult]] = {
    "template": caption_template,
    "original": caption_original,
    "qwen2.5-vl": caption_qwen,
}
