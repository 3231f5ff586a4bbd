"""Metadata-level filter rules: each drop keeps its reason, counted per rule.

A rule is a vectorised function `(table, config) -> BooleanArray` that is True where a
record fails. Rules run in a fixed order and a record counts under the first it fails.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from sdlab.config import FilterConfig

Rule = Callable[[pa.Table, FilterConfig], pa.ChunkedArray]


def _text(table: pa.Table, column: str) -> pa.ChunkedArray:
    if column not in table.column_names:
        return pa.chunked_array([pa.array([""] * table.num_rows, pa.string())])
    return pc.fill_null(table.column(column).cast(pa.string()), "")


def missing_location(table: pa.Table, cfg: FilterConfig) -> pa.ChunkedArray:
    no_url = pc.equal(pc.utf8_length(_text(table, "url")), 0)
    no_path = pc.equal(pc.utf8_length(_text(table, "path")), 0)
    return pc.and_(no_url, no_path)


def title_too_short(table: pa.Table, cfg: FilterConfig) -> pa.ChunkedArray:
    return pc.less(pc.utf8_length(pc.utf8_trim_whitespace(_text(table, "title"))), cfg.min_title_chars)


def caption_too_long(table: pa.Table, cfg: FilterConfig) -> pa.ChunkedArray:
    return pc.greater(pc.utf8_length(_text(table, "caption")), cfg.max_caption_chars)


def blocklisted(table: pa.Table, cfg: FilterConfig) -> pa.ChunkedArray:
    hit = pc.equal(pc.utf8_length(_text(table, "key")), -1)  # all False
    for word in cfg.blocklist:
        for column in ("title", "caption"):
            hit = pc.or_(hit, pc.match_substring(_text(table, column), word, ignore_case=True))
    return hit


def tag_not_allowed(table: pa.Table, cfg: FilterConfig) -> pa.ChunkedArray:
    if cfg.allowed_tags is None:
        return pc.equal(pc.utf8_length(_text(table, "key")), -1)
    return pc.invert(pc.is_in(_text(table, "tag"), value_set=pa.array(cfg.allowed_tags)))


RULES: dict[str, Rule] = {
    "missing_location": missing_location,
    "title_too_short": title_too_short,
    "caption_too_long": caption_too_long,
    "blocklisted": blocklisted,
    "tag_not_allowed": tag_not_allowed,
}


def drop_reasons(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    """The first rule each record fails ('' when it passes them all)."""
    reason = pa.array([""] * table.num_rows, pa.string())
    for name, rule in RULES.items():
        fails = pc.and_(rule(table, cfg), pc.equal(reason, ""))
        reason = pc.if_else(fails, name, reason)
    return reason.combine_chunks() if isinstance(reason, pa.ChunkedArray) else reason


def filter_records(table: pa.Table, cfg: FilterConfig) -> tuple[pa.Table, pa.Table, dict]:
    """Split records into (kept, dropped with `reason`, stats)."""
    reason = drop_reasons(table, cfg)
    keep = pc.equal(reason, "")
    kept = table.filter(keep)
    dropped = table.filter(pc.invert(keep)).append_column("reason", reason.filter(pc.invert(keep)))
    counts = Counter(dropped.column("reason").to_pylist())
    stats = {
        "input": table.num_rows,
        "kept": kept.num_rows,
        "dropped": dropped.num_rows,
        "dropped_by_reason": {name: counts.get(name, 0) for name in RULES},
    }
    return kept, dropped, stats
