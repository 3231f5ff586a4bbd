"""Record sources, chosen by `scrape.source` from one registry."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdlab.config import ScrapeConfig
from sdlab.sources import synthetic

Source = Callable[[ScrapeConfig, Path], list[dict]]

SOURCES: dict[str, Source] = {
    "synthetic": synthetic.scrape,
}
