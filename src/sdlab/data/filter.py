"""Metadata-level filter rules: each drop keeps its reason, counted per rule.

A rule is a vectorised function `(table, config) -> boolean array` that is True where a
record fails. Rules run in a fixed order and a record counts under the first it fails.
The LAION rules (`filter.laion`, thresholds of the high-quality LAION recipes) run only
when that section is set; a null value fails a threshold (it cannot be shown to pass).
`filter_file` streams a records file batch by batch, so billions of rows never sit in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdlab.config import FilterConfig
from sdlab.data.records import DataError
from sdlab.io import atomic_path

Rule = Callable[[pa.Table, FilterConfig], pa.Array]
DROPPED_COLUMNS = ("key", "url", "path", "title")


def _text(table: pa.Table, column: str) -> pa.Array:
    if column not in table.column_names:
        return pa.array([""] * table.num_rows, pa.string())
    return pc.fill_null(table.column(column).cast(pa.string()), "")


def _none(table: pa.Table) -> pa.Array:
    return pa.array(np.zeros(table.num_rows, dtype=bool))


def missing_location(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    no_url = pc.equal(pc.utf8_length(_text(table, "url")), 0)
    no_path = pc.equal(pc.utf8_length(_text(table, "path")), 0)
    return pc.and_(no_url, no_path)


def title_too_short(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    return pc.less(pc.utf8_length(pc.utf8_trim_whitespace(_text(table, "title"))), cfg.min_title_chars)


def caption_too_long(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    return pc.greater(pc.utf8_length(_text(table, "caption")), cfg.max_caption_chars)


def blocklisted(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    hit = _none(table)
    for word in cfg.blocklist:
        for column in ("title", "caption"):
            hit = pc.or_(hit, pc.match_substring(_text(table, column), word, ignore_case=True))
    return hit


def tag_not_allowed(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    if cfg.allowed_tags is None:
        return _none(table)
    return pc.invert(pc.is_in(_text(table, "tag"), value_set=pa.array(cfg.allowed_tags)))


def _number(table: pa.Table, column: str, param: str) -> pa.Array:
    if column not in table.column_names:
        raise DataError(
            f"filter.laion.{param} needs the metadata column {column!r}, which the records lack "
            f"(map it with scrape.laion.columns.{column}, or set filter.laion.{param}: null)"
        )
    return table.column(column).cast(pa.float64())


def _threshold(column: str, param: str, fails: Callable) -> Rule:
    """A rule failing where `fails(values, limit)`, or where the value is null."""

    def rule(table: pa.Table, cfg: FilterConfig) -> pa.Array:
        limit = getattr(cfg.laion, param)
        if limit is None:
            return _none(table)
        return pc.fill_null(fails(_number(table, column, param), limit), True)

    return rule


def side_below_min(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    if cfg.laion.min_side_px is None:
        return _none(table)
    width, height = _number(table, "width", "min_side_px"), _number(table, "height", "min_side_px")
    side = pc.min_element_wise(width, height, skip_nulls=False)  # a null side stays null: fails
    return pc.fill_null(pc.less(side, cfg.laion.min_side_px), True)


def aspect_above_max(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    if cfg.laion.max_aspect_ratio is None:
        return _none(table)
    width, height = _number(table, "width", "max_aspect_ratio"), _number(table, "height", "max_aspect_ratio")
    longest = pc.max_element_wise(width, height, skip_nulls=False)
    shortest = pc.max_element_wise(pc.min_element_wise(width, height, skip_nulls=False), 1e-9, skip_nulls=False)
    ratio = pc.divide(longest, shortest)
    return pc.fill_null(pc.greater(ratio, cfg.laion.max_aspect_ratio), True)


def caption_length_outside(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    length = pc.utf8_length(_text(table, "caption"))
    fails = _none(table)
    if cfg.laion.min_caption_chars is not None:
        fails = pc.or_(fails, pc.less(length, cfg.laion.min_caption_chars))
    if cfg.laion.max_caption_chars is not None:
        fails = pc.or_(fails, pc.greater(length, cfg.laion.max_caption_chars))
    return fails


RULES: dict[str, Rule] = {
    "missing_location": missing_location,
    "title_too_short": title_too_short,
    "caption_too_long": caption_too_long,
    "blocklisted": blocklisted,
    "tag_not_allowed": tag_not_allowed,
}
LAION_RULES: dict[str, Rule] = {
    "aesthetic_below_min": _threshold("aesthetic", "min_aesthetic", pc.less),
    "similarity_below_min": _threshold("similarity", "min_similarity", pc.less),
    "punsafe_above_max": _threshold("punsafe", "max_punsafe", pc.greater_equal),
    "pwatermark_above_max": _threshold("pwatermark", "max_pwatermark", pc.greater_equal),
    "side_below_min": side_below_min,
    "aspect_above_max": aspect_above_max,
    "caption_length_outside": caption_length_outside,
}


def active_rules(cfg: FilterConfig) -> dict[str, Rule]:
    """The rules in their fixed order: location first, then LAION metadata, then text rules."""
    if cfg.laion is None:
        return RULES
    first, *rest = RULES.items()
    return dict([first, *LAION_RULES.items(), *rest])


def drop_reasons(table: pa.Table, cfg: FilterConfig) -> pa.Array:
    """The first rule each record fails ('' when it passes them all)."""
    reason = pa.array([""] * table.num_rows, pa.string())
    undecided = pa.array(np.ones(table.num_rows, dtype=bool))
    for name, rule in active_rules(cfg).items():
        fails = pc.and_(rule(table, cfg), undecided)
        if isinstance(fails, pa.ChunkedArray):
            fails = fails.combine_chunks()
        reason = pc.if_else(fails, name, reason)
        undecided = pc.and_not(undecided, fails)
    return reason


def split(
    table: pa.Table, cfg: FilterConfig, dropped_columns: list[str] | None = None
) -> tuple[pa.Table, pa.Table, Counter]:
    """(kept rows, dropped rows (`dropped_columns` of them, all by default) with `reason`,
    drops counted per reason)."""
    reason = drop_reasons(table, cfg)
    drop = pc.not_equal(reason, "")
    dropped = table if dropped_columns is None else table.select(dropped_columns)
    dropped = dropped.filter(drop).append_column("reason", reason.filter(drop))
    counted = pc.value_counts(reason.filter(drop))
    counts = Counter(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)))
    return table.filter(pc.invert(drop)), dropped, counts


def make_stats(rows: int, kept: int, counts: Counter, cfg: FilterConfig) -> dict:
    return {
        "input": rows,
        "kept": kept,
        "dropped": rows - kept,
        "dropped_by_reason": {name: counts.get(name, 0) for name in active_rules(cfg)},
    }


def filter_records(table: pa.Table, cfg: FilterConfig) -> tuple[pa.Table, pa.Table, dict]:
    """Split records into (kept, dropped with `reason`, stats)."""
    kept, dropped, counts = split(table, cfg)
    return kept, dropped, make_stats(table.num_rows, kept.num_rows, counts, cfg)


def filter_file(records: Path, kept_path: Path, dropped_path: Path, cfg: FilterConfig) -> tuple[dict, list[dict]]:
    """Stream `records` in batches into kept (all columns) and dropped (key, url, path, title,
    reason) files, both written atomically. Returns (stats, the first kept rows)."""
    source = pq.ParquetFile(records)
    schema = source.schema_arrow
    dropped_columns = [c for c in DROPPED_COLUMNS if c in schema.names]
    dropped_schema = pa.schema([schema.field(c) for c in dropped_columns] + [("reason", pa.string())])
    counts: Counter = Counter()
    rows = kept_rows = 0
    head: list[dict] = []
    with (
        atomic_path(kept_path) as kept_temp,
        atomic_path(dropped_path) as dropped_temp,
        pq.ParquetWriter(kept_temp, schema) as kept_out,
        pq.ParquetWriter(dropped_temp, dropped_schema) as dropped_out,
    ):
        for batch in source.iter_batches(batch_size=cfg.batch_rows):
            table = pa.Table.from_batches([batch])
            kept, dropped, batch_counts = split(table, cfg, dropped_columns)
            kept_out.write_table(kept)
            dropped_out.write_table(dropped)
            counts.update(batch_counts)
            rows, kept_rows = rows + table.num_rows, kept_rows + kept.num_rows
            if len(head) < 1000:
                head += kept.slice(0, 1000 - len(head)).to_pylist()
    return make_stats(rows, kept_rows, counts, cfg), head
