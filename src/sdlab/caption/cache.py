"""A persisted, append-only caption cache: JSON lines, one file per worker process.

Each finished batch is appended and fsynced, so a kill loses at most the batch in
flight; a line cut short by a kill is ignored when the cache is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_cache(cache_dir: str | Path) -> dict[str, dict]:
    """cache key -> entry, over every part file (later lines win)."""
    entries: dict[str, dict] = {}
    for part in sorted(Path(cache_dir).glob("*.jsonl")):
        with open(part, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the tail of a killed write
                if isinstance(entry, dict) and "key" in entry:
                    entries[entry["key"]] = entry
    return entries


class CacheWriter:
    """Appends entries for one worker process to its own part file."""

    def __init__(self, cache_dir: str | Path, name: str):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(cache_dir) / f"{name}.jsonl"

    def append(self, entries: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
            handle.flush()
            os.fsync(handle.fileno())
