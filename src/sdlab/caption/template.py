"""Template captions from a record's title and attributes."""

from __future__ import annotations

import string

from sdlab.config import CaptionConfig
from sdlab.prompts import safe_title


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def caption_record(row: dict, cfg: CaptionConfig) -> tuple[str, str]:
    """(caption, reason): reason is '' for the full template, else why it fell back. The title
    enters cleaned (`safe_title`): it is scraped data."""
    if "title" in row:
        row = {**row, "title": safe_title(row["title"] or "")}
    missing = [f for f in template_fields(cfg.template) if not str(row.get(f) or "").strip()]
    if not missing:
        return cfg.template.format_map(row).strip(), ""
    fallback_missing = [f for f in template_fields(cfg.fallback_template) if not str(row.get(f) or "").strip()]
    if fallback_missing:
        return "", f"missing_field:{fallback_missing[0]}"
    return cfg.fallback_template.format_map(row).strip(), f"fallback:missing_{missing[0]}"


def caption_rows(rows: list[dict], cfg: CaptionConfig) -> list[tuple[str, str]]:
    return [caption_record(row, cfg) for row in rows]
