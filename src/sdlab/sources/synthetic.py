"""Procedurally drawn "blob" emoji with exact, structured captions.

Every attribute is sampled from a per-image seed, drawn on a transparent canvas at 4x
and downsampled (anti-aliasing), and written into the caption in the structured form the
Qwen2.5-VL prompt produces for real emoji. Because captions are ground truth, prompt
adherence is measurable without a pretrained judge.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from sdlab.config import ScrapeConfig

SKIN_COLORS: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 204, 40),
    "orange": (255, 128, 0),
    "red": (215, 30, 40),
    "pink": (255, 120, 200),
    "purple": (140, 60, 200),
    "blue": (40, 100, 235),
    "green": (40, 175, 60),
    "brown": (130, 80, 40),
}
HEAD_SHAPES = ("round", "tall", "wide", "square")
EYES = ("dot", "oval", "closed", "big")
MOUTHS = ("smiling", "frowning", "open", "flat")
EXPRESSIONS = ("happy", "sad", "angry", "surprised", "neutral")
ACTIONS = ("no action", "blushing", "crying", "sweating")
ATTRIBUTES = ("skin_color", "head_shape", "eyes", "mouth", "expression", "action")

INK = (30, 25, 30, 255)
TEAR = (90, 190, 255, 255)
BLUSH = (255, 90, 120, 200)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Blob:
    skin_color: str
    head_shape: str
    eyes: str
    mouth: str
    expression: str
    action: str
    scale: float  # head size as a fraction of the canvas
    dx: float  # centre offset as a fraction of the canvas
    dy: float

    @property
    def title(self) -> str:
        return f"blob{self.expression}"

    def caption(self) -> str:
        return (
            f"{self.title} emoji with a {self.head_shape} head, {self.eyes} eyes, "
            f"{self.mouth} mouth, {self.expression} expression, {self.skin_color} skin color, "
            f"{self.action}, with a white background."
        )


def sample_blob(rng: np.random.Generator) -> Blob:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    return Blob(
        skin_color=pick(tuple(SKIN_COLORS)),
        head_shape=pick(HEAD_SHAPES),
        eyes=pick(EYES),
        mouth=pick(MOUTHS),
        expression=pick(EXPRESSIONS),
        action=pick(ACTIONS),
        scale=float(rng.uniform(0.78, 0.92)),
        dx=float(rng.uniform(-0.03, 0.03)),
        dy=float(rng.uniform(-0.03, 0.03)),
    )


def _head_box(blob: Blob, size: int) -> tuple[float, float, float, float]:
    w = h = blob.scale * size
    if blob.head_shape == "tall":
        w *= 0.72
    elif blob.head_shape == "wide":
        h *= 0.68
    cx, cy = size * (0.5 + blob.dx), size * (0.5 + blob.dy)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _draw_eyes(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, u: float) -> None:
    for x in ex:
        if blob.eyes == "dot":
            draw.ellipse((x - u, ey - u, x + u, ey + u), fill=INK)
        elif blob.eyes == "oval":
            draw.ellipse((x - 0.8 * u, ey - 1.8 * u, x + 0.8 * u, ey + 1.8 * u), fill=INK)
        elif blob.eyes == "closed":
            draw.arc((x - 1.6 * u, ey - 1.2 * u, x + 1.6 * u, ey + 1.2 * u), 200, 340, fill=INK, width=max(1, int(0.6 * u)))
        else:  # big: white sclera with a pupil
            draw.ellipse((x - 2 * u, ey - 2 * u, x + 2 * u, ey + 2 * u), fill=(255, 255, 255, 255), outline=INK, width=max(1, int(0.4 * u)))
            draw.ellipse((x - 0.9 * u, ey - 0.9 * u, x + 0.9 * u, ey + 0.9 * u), fill=INK)


def _draw_brows(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, u: float) -> None:
    width = max(1, int(0.6 * u))
    for side, x in zip((-1, 1), ex):
        inner, outer = x - side * 1.8 * u, x + side * 1.8 * u
        if blob.expression == "angry":  # slanted down toward the nose
            draw.line((outer, ey - 4 * u, inner, ey - 2.6 * u), fill=INK, width=width)
        elif blob.expression == "sad":  # slanted up toward the nose
            draw.line((outer, ey - 2.6 * u, inner, ey - 4 * u), fill=INK, width=width)
        elif blob.expression == "happy":
            draw.arc((x - 1.8 * u, ey - 4.6 * u, x + 1.8 * u, ey - 2.4 * u), 200, 340, fill=INK, width=width)
        elif blob.expression == "surprised":  # raised high
            draw.arc((x - 1.8 * u, ey - 6.2 * u, x + 1.8 * u, ey - 4.0 * u), 200, 340, fill=INK, width=width)


def _draw_mouth(draw: ImageDraw.ImageDraw, blob: Blob, cx: float, my: float, u: float) -> None:
    width = max(1, int(0.7 * u))
    if blob.mouth == "smiling":
        draw.arc((cx - 4 * u, my - 3 * u, cx + 4 * u, my + 1.5 * u), 20, 160, fill=INK, width=width)
    elif blob.mouth == "frowning":
        draw.arc((cx - 4 * u, my, cx + 4 * u, my + 4 * u), 200, 340, fill=INK, width=width)
    elif blob.mouth == "open":
        draw.ellipse((cx - 2.2 * u, my - 1.2 * u, cx + 2.2 * u, my + 2.6 * u), fill=INK)
    else:
        draw.line((cx - 3.5 * u, my, cx + 3.5 * u, my), fill=INK, width=width)


def _draw_action(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, box, u: float) -> None:
    if blob.action == "blushing":
        for x in ex:
            draw.ellipse((x - 2.2 * u, ey + 2 * u, x + 2.2 * u, ey + 3.4 * u), fill=BLUSH)
    elif blob.action == "crying":
        x = ex[0]
        draw.ellipse((x - 1.1 * u, ey + 2 * u, x + 1.1 * u, ey + 5 * u), fill=TEAR)
    elif blob.action == "sweating":
        x, y = box[2] - 0.22 * (box[2] - box[0]), box[1] + 0.22 * (box[3] - box[1])
        draw.ellipse((x - 1.3 * u, y - 1.3 * u, x + 1.3 * u, y + 2.2 * u), fill=TEAR)


def draw_blob(blob: Blob, image_px: int) -> Image.Image:
    """Render `blob` as an anti-aliased RGBA image of `image_px` square."""
    size = image_px * SUPERSAMPLE
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    box = _head_box(blob, size)
    skin = SKIN_COLORS[blob.skin_color] + (255,)
    if blob.head_shape == "square":
        draw.rounded_rectangle(box, radius=0.22 * (box[2] - box[0]), fill=skin)
    else:
        draw.ellipse(box, fill=skin)
    u = (box[2] - box[0]) / 24 if blob.head_shape != "tall" else (box[2] - box[0]) / 18
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ex, ey = [cx - 5 * u, cx + 5 * u], cy - 1.5 * u
    _draw_eyes(draw, blob, ex, ey, u)
    _draw_brows(draw, blob, ex, ey, u)
    _draw_mouth(draw, blob, cx, cy + 4.5 * u, u)
    _draw_action(draw, blob, ex, ey, box, u)
    return image.resize((image_px, image_px), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def duplicate_sources(num_images: int, fraction: float, seed: int) -> dict[int, int]:
    """Map image index -> earlier index it copies byte for byte (planted duplicates)."""
    count = int(num_images * fraction)
    if count == 0 or num_images < 2:
        return {}
    rng = np.random.default_rng([seed, 7])
    copies = rng.choice(np.arange(1, num_images), size=count, replace=False)
    return {int(i): int(rng.integers(i)) for i in sorted(copies)}


def scrape(config: ScrapeConfig, out_dir: Path) -> list[dict]:
    """Draw `num_images` blobs into `out_dir/images` and return their records."""
    cfg = config.synthetic
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    copies = duplicate_sources(cfg.num_images, cfg.duplicate_fraction, config.seed)
    records = []
    for index in tqdm(range(cfg.num_images), desc="scrape synthetic", unit="img"):
        origin = index
        while origin in copies:  # a copy of a copy draws the original
            origin = copies[origin]
        blob = sample_blob(np.random.default_rng([config.seed, origin]))
        key = f"syn-{index:06d}"
        path = images_dir / f"{key}.png"
        path.write_bytes(png_bytes(draw_blob(blob, cfg.image_px)))
        attributes = {name: getattr(blob, name) for name in ATTRIBUTES}
        records.append({
            "key": key, "source": "synthetic", "url": "", "path": str(path),
            "title": blob.title, "caption": blob.caption(), "tag": "",
            "background": "white", **attributes,
        })
    return records

