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
from sdlab.data.images import composite_on_white

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
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "skin_color": tuple(SKIN_COLORS),
    "head_shape": HEAD_SHAPES,
    "eyes": EYES,
    "mouth": MOUTHS,
    "expression": EXPRESSIONS,
    "action": ACTIONS,
}

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


def caption_of(attributes: dict) -> str:
    """The structured caption of a blob with these attributes (a record's columns)."""
    return Blob(**{name: attributes[name] for name in ATTRIBUTES}, scale=0.0, dx=0.0, dy=0.0).caption()


def variations(attributes: dict, attribute: str) -> list[tuple[str, str]]:
    """(value, caption) for every value of `attribute`, the other attributes kept: a prompt
    row in which only that attribute changes."""
    return [(value, caption_of({**attributes, attribute: value})) for value in ATTRIBUTE_VALUES[attribute]]


def sample_blob(rng: np.random.Generator) -> Blob:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    return Blob(
        skin_color=pick(tuple(SKIN_COLORS)),
        head_shape=pick(HEAD_SHAPES),
        eyes=pick(EYES),
        mouth=pick(MOUTHS),
        expression=pick(EXPRESSIONS),
        action=pick(ACTIONS),
        scale=float(rng.uniform(0.86, 0.96)),
        dx=float(rng.uniform(-0.02, 0.02)),
        dy=float(rng.uniform(-0.02, 0.02)),
    )


def _head_box(blob: Blob, size: int) -> tuple[float, float, float, float]:
    w = h = blob.scale * size
    if blob.head_shape == "tall":
        w *= 0.74
    elif blob.head_shape == "wide":
        h *= 0.74
    cx, cy = size * (0.5 + blob.dx), size * (0.5 + blob.dy)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


# Face layout in units u = (shorter side of the head) / 14, so every feature keeps its size
# relative to the head whatever its shape, and strokes are >= 1.5 px at a 32 px image.
EYE_DX, EYE_Y, BROW_Y, MOUTH_Y = 3.2, -1.2, -3.9, 3.3


def _stroke(u: float, weight: float = 1.0) -> int:
    return max(1, round(1.1 * weight * u))


def _draw_eyes(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, u: float) -> None:
    for x in ex:
        if blob.eyes == "dot":
            draw.ellipse((x - 0.9 * u, ey - 0.9 * u, x + 0.9 * u, ey + 0.9 * u), fill=INK)
        elif blob.eyes == "oval":
            draw.ellipse((x - 0.8 * u, ey - 1.9 * u, x + 0.8 * u, ey + 1.9 * u), fill=INK)
        elif blob.eyes == "closed":  # a thick ^ arc
            draw.arc((x - 1.6 * u, ey - 0.6 * u, x + 1.6 * u, ey + 2.4 * u), 200, 340, fill=INK, width=_stroke(u))
        else:  # big: white sclera with a pupil
            draw.ellipse(
                (x - 1.8 * u, ey - 1.8 * u, x + 1.8 * u, ey + 1.8 * u),
                fill=(255, 255, 255, 255),
                outline=INK,
                width=_stroke(u, 0.5),
            )
            draw.ellipse((x - 0.8 * u, ey - 0.8 * u, x + 0.8 * u, ey + 0.8 * u), fill=INK)


def _draw_brows(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, u: float) -> None:
    """The expression, drawn as thick brows: angry slants down to the nose, sad up to it,
    happy arcs low, surprised arcs high above the eyes, neutral has none."""
    width, by = _stroke(u), ey + BROW_Y * u - EYE_Y * u
    for side, x in zip((-1, 1), ex, strict=True):
        inner, outer = x - side * 1.7 * u, x + side * 1.7 * u
        if blob.expression == "angry":
            draw.line((outer, by - 1.2 * u, inner, by + 0.9 * u), fill=INK, width=width)
        elif blob.expression == "sad":
            draw.line((outer, by + 0.9 * u, inner, by - 1.2 * u), fill=INK, width=width)
        elif blob.expression == "happy":
            draw.arc((x - 1.7 * u, by - 0.4 * u, x + 1.7 * u, by + 2.2 * u), 200, 340, fill=INK, width=width)
        elif blob.expression == "surprised":
            draw.arc((x - 1.7 * u, by - 2.4 * u, x + 1.7 * u, by + 0.2 * u), 200, 340, fill=INK, width=width)


def _draw_mouth(draw: ImageDraw.ImageDraw, blob: Blob, cx: float, my: float, u: float) -> None:
    width = _stroke(u, 1.2)
    if blob.mouth == "smiling":  # a U
        draw.arc((cx - 3.2 * u, my - 2.6 * u, cx + 3.2 * u, my + 1.4 * u), 15, 165, fill=INK, width=width)
    elif blob.mouth == "frowning":  # an upside-down U
        draw.arc((cx - 3.2 * u, my - 0.8 * u, cx + 3.2 * u, my + 3.2 * u), 195, 345, fill=INK, width=width)
    elif blob.mouth == "open":  # a filled O
        draw.ellipse((cx - 1.7 * u, my - 1.3 * u, cx + 1.7 * u, my + 1.9 * u), fill=INK)
    else:
        draw.line((cx - 3.0 * u, my + 0.3 * u, cx + 3.0 * u, my + 0.3 * u), fill=INK, width=width)


def _draw_action(draw: ImageDraw.ImageDraw, blob: Blob, ex: list[float], ey: float, box, u: float) -> None:
    """Outlined in ink, so each mark shows on every skin color."""
    outline = _stroke(u, 0.45)
    if blob.action == "blushing":  # a cheek patch with two hatch strokes, under each eye
        for x in ex:
            draw.ellipse((x - 1.6 * u, ey + 1.9 * u, x + 1.6 * u, ey + 3.3 * u), fill=BLUSH, outline=INK, width=outline)
    elif blob.action == "crying":  # a tear stream under the outer side of each eye
        for side, x in zip((-1, 1), ex, strict=True):
            x += side * 0.9 * u
            draw.rounded_rectangle(
                (x - 0.7 * u, ey + 1.4 * u, x + 0.7 * u, ey + 3.9 * u),
                radius=0.7 * u,
                fill=TEAR,
                outline=INK,
                width=outline,
            )
    elif blob.action == "sweating":  # a big drop on the upper right of the head
        x, y = box[2] - 0.2 * (box[2] - box[0]), box[1] + 0.2 * (box[3] - box[1])
        draw.polygon([(x, y - 2.6 * u), (x - 1.3 * u, y), (x + 1.3 * u, y)], fill=TEAR)
        draw.ellipse((x - 1.4 * u, y - 1.0 * u, x + 1.4 * u, y + 1.8 * u), fill=TEAR, outline=INK, width=outline)


def draw_blob(blob: Blob, image_px: int) -> Image.Image:
    """Render `blob` as an anti-aliased RGBA image of `image_px` square."""
    size = image_px * SUPERSAMPLE
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    box = _head_box(blob, size)
    skin = SKIN_COLORS[blob.skin_color] + (255,)
    if blob.head_shape == "square":
        draw.rounded_rectangle(box, radius=0.2 * min(box[2] - box[0], box[3] - box[1]), fill=skin)
    else:
        draw.ellipse(box, fill=skin)
    u = min(box[2] - box[0], box[3] - box[1]) / 14
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ex, ey = [cx - EYE_DX * u, cx + EYE_DX * u], cy + EYE_Y * u
    _draw_action(draw, blob, ex, ey, box, u)
    _draw_eyes(draw, blob, ex, ey, u)
    _draw_brows(draw, blob, ex, ey, u)
    _draw_mouth(draw, blob, cx, cy + MOUTH_Y * u, u)
    return image.resize((image_px, image_px), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def duplicate_sources(num_images: int, fraction: float, seed: int, stream: int = 7) -> dict[int, int]:
    """Map image index -> earlier index it copies (planted duplicates; `stream` 8: near-copies)."""
    count = int(num_images * fraction)
    if count == 0 or num_images < 2:
        return {}
    rng = np.random.default_rng([seed, stream])
    copies = rng.choice(np.arange(1, num_images), size=count, replace=False)
    return {int(i): int(rng.integers(i)) for i in sorted(copies)}


def near_copy_sources(cfg, seed: int, exact: dict[int, int]) -> dict[int, int]:
    """Map image index -> earlier original it is a near-copy of (`near_duplicate_fraction`):
    other bytes, nearly the same pixels, as a re-upload. Never an exact copy's index."""
    near = duplicate_sources(cfg.num_images, cfg.near_duplicate_fraction, seed, stream=8)
    resolved = {}
    for index, origin in near.items():
        while origin in exact or origin in near:
            origin = exact.get(origin, near.get(origin))
        if index not in exact:
            resolved[index] = origin
    return resolved


def near_copy_bytes(image: Image.Image, index: int) -> bytes:
    """A re-upload: resized to three quarters and saved as JPEG (quality 80-95 by index, so two
    re-uploads of one image are not byte-identical)."""
    buffer = io.BytesIO()
    small = composite_on_white(image).resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.BICUBIC)
    small.save(buffer, format="JPEG", quality=80 + index % 16)
    return buffer.getvalue()


def scrape(config: ScrapeConfig, out_dir: Path) -> list[dict]:
    """Draw `num_images` blobs into `out_dir/images` and return their records."""
    cfg = config.synthetic
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    copies = duplicate_sources(cfg.num_images, cfg.duplicate_fraction, config.seed)
    near = near_copy_sources(cfg, config.seed, copies)
    records = []
    for index in tqdm(range(cfg.num_images), desc="scrape synthetic", unit="img"):
        origin = index
        while origin in copies:  # a copy of a copy draws the original
            origin = copies[origin]
        origin = near.get(index, origin)
        blob = sample_blob(np.random.default_rng([config.seed, origin]))
        key = f"syn-{index:06d}"
        image = draw_blob(blob, cfg.image_px)
        path = images_dir / f"{key}.{'jpg' if index in near else 'png'}"
        path.write_bytes(near_copy_bytes(image, index) if index in near else png_bytes(image))
        attributes = {name: getattr(blob, name) for name in ATTRIBUTES}
        records.append(
            {
                "key": key,
                "source": "synthetic",
                "url": "",
                "path": str(path),
                "title": blob.title,
                "caption": blob.caption(),
                "tag": "",
                "background": "white",
                **attributes,
            }
        )
    return records
