"""Captioners, chosen by `caption.backend` from one registry.

A captioner maps (kept index rows, config, shards folder) to one (caption, reason) per
row; reason is '' for a normal caption, else why it is a fallback (or empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdlab.caption import template
from sdlab.config import CaptionConfig

Captioner = Callable[[list[dict], CaptionConfig, Path], list[tuple[str, str]]]

CAPTIONERS: dict[str, Captioner] = {
    "template": lambda rows, cfg, shards_dir: template.caption_rows(rows, cfg),
}
