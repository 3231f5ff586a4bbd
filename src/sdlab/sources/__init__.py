"""Record sources, chosen by `scrape.source` from one registry.

A source is `(config, out_dir, state_dir, stats) -> iterable of record batches` (lists of
dicts or pyarrow tables, streamed to `records.parquet`). `out_dir` holds files a source
makes (images it renders), `state_dir` is a persisted folder for resumable progress, and
`stats` collects the source's own counts for `reports/scrape/stats.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa

from sdlab.config import ScrapeConfig
from sdlab.sources import discord, emoji_sets, folder, laion, noto, synthetic

Batch = list[dict] | pa.Table
Source = Callable[[ScrapeConfig, Path, Path, dict], Iterable[Batch]]


def _synthetic(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> Iterable[Batch]:
    return [synthetic.scrape(config, out_dir)]


SOURCES: dict[str, Source] = {
    "synthetic": _synthetic,
    "discord": discord.scrape,
    "laion": laion.scrape,
    "folder": folder.scrape,
    "noto": noto.scrape,
    "emoji_sets": emoji_sets.scrape,
}
