"""Captioners, chosen by `caption.backend` from one registry.

A captioner maps (kept index rows, config, shards folder, cache folder) to a
`CaptionResult`: one (caption, reason) per row, where reason is '' for a normal caption
and otherwise says why it is a fallback, plus counts for stats.json and any extra
per-row columns of the captions table (e.g. the model that wrote each caption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sdlab.caption import template
from sdlab.config import CaptionConfig


@dataclass
class CaptionResult:
    captions: list[tuple[str, str]]
    stats: dict = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)


def caption_template(rows: list[dict], cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    return CaptionResult(template.caption_rows(rows, cfg))


def caption_original(rows: list[dict], cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    """Keep the caption the source brought (LAION's alt text); template where it is empty."""
    out = []
    for row in rows:
        original = str(row.get("caption") or "").strip()
        out.append((original, "") if original else (template.caption_record(row, cfg)[0], "no_original_caption"))
    return CaptionResult(out)


def caption_qwen(rows: list[dict], cfg: CaptionConfig, shards_dir: Path, cache_dir: Path) -> CaptionResult:
    from sdlab.caption.qwen_pool import caption_missing
    from sdlab.caption.qwen_vl import GenerationSettings, clean_caption, validate_caption

    settings = GenerationSettings(cfg.model, cfg.prompt, cfg.max_new_tokens, cfg.min_pixels, cfg.max_pixels)
    cache, captioned_now = caption_missing(rows, settings, str(shards_dir), str(cache_dir), cfg.batch_size,
                                           cfg.workers, cfg.threads_per_worker, cfg.precision)
    out = []
    for row in rows:
        title = str(row.get("title") or "")
        caption = clean_caption(cache[settings.cache_key(row["md5"])]["raw"])
        reason = validate_caption(caption, title, cfg.min_chars, cfg.max_chars, cfg.require_title)
        out.append((template.caption_record(row, cfg)[0], f"invalid_{reason}") if reason else (caption, ""))
    return CaptionResult(out, {"model": cfg.model, "prompt_hash": settings.prompt_hash,
                               "captioned_now": captioned_now, "cache_hits": len(rows) - captioned_now},
                         {"model": [cfg.model] * len(rows), "prompt_hash": [settings.prompt_hash] * len(rows)})


CAPTIONERS: dict[str, Callable[[list[dict], CaptionConfig, Path, Path], CaptionResult]] = {
    "template": caption_template,
    "original": caption_original,
    "qwen2.5-vl": caption_qwen,
}
