"""A user's own images (`scrape.source: folder`).

Two layouts, like torchvision's ImageFolder and the Hugging Face imagefolder loader:
- class sub-folders: `root/<label>/**/image`; caption from `folder.caption_template`
  with `{label}` the folder name (underscores as spaces);
- `root/metadata.csv` or `root/metadata.jsonl` with a `file_name` column and a `caption`
  (or `text`) and optional `title` column.
Files outside the folder (`../x.png` in the metadata) or with other suffixes are skipped
and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from sdlab.config import ScrapeConfig
from sdlab.data.records import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def record(root: Path, path: Path, title: str, caption: str, label: str) -> dict:
    relative = path.relative_to(root).as_posix()
    return {
        "key": "folder-" + hashlib.sha1(relative.encode()).hexdigest()[:16],
        "source": "folder",
        "url": "",
        "path": str(path),
        "title": title,
        "caption": caption,
        "tag": label,
        "file_name": relative,
    }


def read_metadata(path: Path) -> list[dict]:
    try:
        if path.suffix == ".csv":
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False)).to_pylist()
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable as {path.suffix[1:]}: {exc}") from None


def from_metadata(root: Path, metadata: Path, skipped: Counter) -> list[dict]:
    rows = read_metadata(metadata)
    if rows and "file_name" not in rows[0]:
        raise DataError(f"{metadata}: needs a file_name column (has {sorted(rows[0])})")
    records = []
    for row in rows:
        path = (root / str(row["file_name"])).resolve()
        if not path.is_relative_to(root):
            skipped["outside_folder"] += 1
            continue
        caption = str(row.get("caption") or row.get("text") or "")
        title = str(row.get("title") or caption or path.stem)
        records.append(record(root, path, title, caption, str(row.get("label") or "")))
    return records


def from_class_folders(root: Path, template: str, skipped: Counter) -> list[dict]:
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped["not_an_image_file"] += 1
            continue
        parts = path.relative_to(root).parts
        label = parts[0].replace("_", " ") if len(parts) > 1 else ""
        caption = template.format(label=label) if label else ""
        records.append(record(root, path, label or path.stem.replace("_", " "), caption, label))
    return records


def scrape(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> list[list[dict]]:
    root = Path(config.folder.path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"scrape.folder.path: {config.folder.path} is not a folder")
    skipped: Counter = Counter()
    metadata = next((root / name for name in METADATA_FILES if (root / name).is_file()), None)
    if metadata is not None:
        records = from_metadata(root, metadata, skipped)
    else:
        records = from_class_folders(root, config.folder.caption_template, skipped)
    if not records:
        raise DataError(f"scrape.folder.path: no image found in {root} (suffixes {sorted(IMAGE_SUFFIXES)})")
    stats.update({"layout": "metadata" if metadata else "class_folders", "skipped_by_reason": dict(skipped)})
    return [records]
