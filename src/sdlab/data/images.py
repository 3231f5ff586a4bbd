"""Pure image preparation: validate, composite alpha on white, fit to the training size.

Three fits (`download.fit`): `pad` letterboxes onto a white square (emoji on white: harmless),
`crop` fills the square and center-crops the rest, `bucket` takes the resolution of nearest
aspect from a fixed list of about the same area (`aspect_buckets`, NovelAI's scheme as kohya,
SimpleTuner and OneTrainer use it) and center-crops the few percent left, so a photo keeps its
shape and no model learns white bars."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000  # decompression bombs: refused before any pixel is decoded


class ImageRejected(ValueError):
    """An image that cannot be used; `reason` is the counted drop reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


FITS = ("pad", "crop", "bucket")


@dataclass(frozen=True)
class PreparedImage:
    png: bytes
    md5: str  # of the original bytes
    width: int  # original size
    height: int
    bucket: str = ""  # the stored size, "<width>x<height>"
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # the box of the original kept: left, top, right, bottom


def bucket_name(width: int, height: int) -> str:
    return f"{width}x{height}"


def bucket_size(name: str) -> tuple[int, int]:
    """(width, height) of a bucket name."""
    width, _, height = name.partition("x")
    return int(width), int(height)


def aspect_buckets(image_px: int, multiple: int, max_aspect_ratio: float) -> list[tuple[int, int]]:
    """(width, height) resolutions of at most `image_px`² pixels, each side a multiple of
    `multiple`, aspect at most `max_aspect_ratio`: for each width, the tallest height that fits
    the area (and its transpose), square first, then by aspect. 256, 32, 2.0 -> 256x256,
    288x224, 224x288, 320x192, 192x320, 384x160 is over 2:1 and left out, ..."""
    if image_px % multiple:
        raise ValueError(f"image_px {image_px} is not a multiple of the bucket step {multiple}")
    area, sizes = image_px * image_px, {(image_px, image_px)}
    for width in range(image_px + multiple, int(image_px * max_aspect_ratio) + 1, multiple):
        height = area // width // multiple * multiple
        if height >= multiple and width / height <= max_aspect_ratio:
            sizes |= {(width, height), (height, width)}
    return sorted(sizes, key=lambda s: (abs(math.log(s[0] / s[1])), -s[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect is nearest the image's (in log ratio; ties: the earlier)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - aspect))


def cover_crop(image: Image.Image, width: int, height: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Resize to cover `width` x `height` and center-crop the rest: no padding anywhere.
    Also the box of the original that was kept (left, top, right, bottom, original pixels)."""
    scale = max(width / image.width, height / image.height)
    box_w, box_h = min(image.width, width / scale), min(image.height, height / scale)
    left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
    box = (left, top, left + box_w, top + box_h)
    fitted = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    return fitted, tuple(round(v) for v in box)


def fit_image(
    image: Image.Image, image_px: int, fit: str = "pad", buckets: list[tuple[int, int]] | None = None
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The training image of `image` under `fit` (see the module), and the crop box kept."""
    if fit == "pad":
        return fit_square(image, image_px), (0, 0, image.width, image.height)
    if fit == "crop":
        return cover_crop(image, image_px, image_px)
    if fit == "bucket":
        return cover_crop(image, *nearest_bucket(image.width, image.height, buckets or [(image_px, image_px)]))
    raise ValueError(f"download.fit: {fit!r} is not one of {FITS}")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB image with any transparency composited onto white (first frame only)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, image_px: int) -> Image.Image:
    """Resize to fit `image_px` keeping aspect, centred on a white square."""
    scale = image_px / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (image_px, image_px), (255, 255, 255))
    canvas.paste(resized, ((image_px - size[0]) // 2, (image_px - size[1]) // 2))
    return canvas


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The first frame of an image; `too_large` from its header alone when it has more than
    `max_pixels` pixels (a 17 KB PNG can claim 12000x12000), `decode_error` for bad bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own check below, from the header
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            if image.width * image.height > max_pixels:
                raise ImageRejected("too_large", f"{image.width}x{image.height} > {max_pixels} pixels")
            image.seek(0)
            image.load()
    except ImageRejected:
        raise
    except Image.UnidentifiedImageError:  # its message names the buffer's address: not reproducible
        raise ImageRejected("decode_error", "UnidentifiedImageError: not an image PIL can open") from None
    except Exception as exc:  # PIL raises many types for bad bytes; each becomes a reason
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from None
    return image


def prepare_image(
    data: bytes,
    image_px: int,
    min_side_px: int,
    max_aspect_ratio: float,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    fit: str = "pad",
    buckets: list[tuple[int, int]] | None = None,
) -> PreparedImage:
    """Validate original bytes and return the training-resolution PNG (`fit_image`)."""
    if not data:
        raise ImageRejected("empty_file")
    image = decode(data, max_pixels)
    width, height = image.size
    if min(width, height) < min_side_px:
        raise ImageRejected("too_small", f"{width}x{height} < {min_side_px}px")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise ImageRejected("bad_aspect_ratio", f"{width}x{height}")
    fitted, crop = fit_image(composite_on_white(image), image_px, fit, buckets)
    buffer = io.BytesIO()
    fitted.save(buffer, format="PNG")
    bucket = bucket_name(*fitted.size)
    return PreparedImage(buffer.getvalue(), md5_hex(data), width, height, bucket, crop)
