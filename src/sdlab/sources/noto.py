"""Real emoji artwork, offline (`scrape.source: noto`): every emoji of the Noto Color Emoji
font (Debian `fonts-noto-color-emoji`), named by the `emoji` package.

Each fully-qualified emoji is drawn with the font's colour bitmaps (only size 109 loads),
cropped to its ink, centred on a transparent square and resized to `noto.image_px`.
Sequences the font has no single glyph for are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from sdlab.config import ScrapeConfig
from sdlab.data.records import DataError

FONT_PX = 109  # the only size of the bitmap strikes
GLYPH_PX = 136  # advance of one glyph at that size


def emoji_list() -> list[tuple[str, str]]:
    """(emoji, readable name) for every fully-qualified emoji, in a stable order."""
    import emoji

    qualified = emoji.STATUS["fully_qualified"]
    return sorted(
        (char, data["en"].strip(":").replace("_", " "))
        for char, data in emoji.EMOJI_DATA.items()
        if data["status"] == qualified
    )


def render(char: str, font: ImageFont.FreeTypeFont, image_px: int) -> Image.Image | str:
    """The glyph as an RGBA square, or the reason it cannot be used."""
    canvas = Image.new("RGBA", (GLYPH_PX * 4, GLYPH_PX + 40))
    ImageDraw.Draw(canvas).text((8, 8), char, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return "glyph_missing"
    if box[2] - box[0] > GLYPH_PX * 1.2:
        return "no_single_glyph"  # the font draws the sequence as several emoji side by side
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.resize((image_px, image_px), Image.Resampling.LANCZOS)


def key_of(char: str) -> str:
    return "noto-" + "-".join(f"{ord(c):x}" for c in char)


def load_font(path: str) -> ImageFont.FreeTypeFont:
    """The font at its bitmap size, or an error naming the key and how to install it."""
    if not Path(path).is_file():
        raise DataError(
            f"scrape.noto.font: {path} not found; install it with "
            "`apt-get install fonts-noto-color-emoji` (`make install` does it)"
        )
    return ImageFont.truetype(path, FONT_PX)


def scrape(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> list[list[dict]]:
    cfg = config.noto
    font = load_font(cfg.font)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = emoji_list()[: cfg.max_emoji]
    skipped: Counter = Counter()
    records = []
    for char, name in tqdm(entries, desc="scrape noto", unit="emoji"):
        image = render(char, font, cfg.image_px)
        if isinstance(image, str):
            skipped[image] += 1
            continue
        key = key_of(char)
        path = images / f"{key}.png"
        image.save(path)
        records.append(
            {
                "key": key,
                "source": "noto",
                "url": "",
                "path": str(path),
                "title": name,
                "caption": "",
                "tag": "",
                "emoji": char,
            }
        )
    stats.update({"emoji": len(entries), "skipped_by_reason": dict(skipped)})
    return [records]
