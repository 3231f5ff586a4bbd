"""Pure image preparation: validate, composite alpha on white, fit to a square."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000  # decompression bombs: refused before any pixel is decoded


class ImageRejected(ValueError):
    """An image that cannot be used; `reason` is the counted drop reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    png: bytes
    md5: str  # of the original bytes
    width: int  # original size
    height: int


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
    data: bytes, image_px: int, min_side_px: int, max_aspect_ratio: float, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreparedImage:
    """Validate original bytes and return the training-resolution PNG."""
    if not data:
        raise ImageRejected("empty_file")
    image = decode(data, max_pixels)
    width, height = image.size
    if min(width, height) < min_side_px:
        raise ImageRejected("too_small", f"{width}x{height} < {min_side_px}px")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise ImageRejected("bad_aspect_ratio", f"{width}x{height}")
    square = fit_square(composite_on_white(image), image_px)
    buffer = io.BytesIO()
    square.save(buffer, format="PNG")
    return PreparedImage(png=buffer.getvalue(), md5=md5_hex(data), width=width, height=height)
