"""Image bytes -> the picture a person sees, as RGB, the same way everywhere: ingestion, training, evaluation,
serving.

Promises: the pixel count is read from the file header and checked against a cap before anything is decoded
(a small file can declare 169 megapixels); EXIF orientation is applied (a phone photo is not trained sideways);
16-bit images are scaled to 8 bits (not clipped to white); palette, grayscale, CMYK and images with an alpha
channel become RGB (transparent parts on white). Bytes that are no image raise ``ImageRejected`` with a
reason a caller counts under.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ValueError):
    """Bytes that are not an image this project decodes; ``reason`` is the counter's name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _open(data: bytes) -> Image.Image:
    """Open (read the header only); PIL's own bomb warning is silenced: our cap is checked right after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _checked(image: Image.Image, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} is over the cap of {max_pixels} pixels")
    return image


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped where the EXIF orientation rotates by 90 degrees."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as displayed, after checking the header against ``max_pixels`` and that the bytes
    decode (JPEGs at 1/8 scale: cheap)."""
    try:
        with _open(data) as image:
            _checked(image, max_pixels)
            size = oriented_size(image)
            image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
            return size
    except Image.DecompressionBombError as error:
        raise ImageRejected("too_many_pixels", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageRejected):
            raise
        raise ImageRejected("corrupt_image", str(error)) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image in any mode as 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and 32-bit integer) gray: scale to 8 bits by the range the mode can hold.
        top = 65535.0 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 255.0
        gray = np.clip(np.asarray(image, dtype=np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The picture as displayed, 8-bit RGB; ``ImageRejected`` for a pixel bomb or bytes that do not decode."""
    try:
        with _open(data) as image:
            _checked(image, max_pixels)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise ImageRejected("too_many_pixels", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageRejected):
            raise
        raise ImageRejected("corrupt_image", str(error)) from None


STORED_JPEG_QUALITY = 95


def resized_jpeg(data: bytes, short_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The picture with its shorter side scaled down to ``short_side`` (never up), as a quality-95 JPEG: what a
    training loader decodes several times faster than the original. Bytes that do not decode, and pictures
    already that small, are returned as they are (the loader skips and counts what does not decode)."""
    try:
        with _open(data) as image:
            width, height = oriented_size(_checked(image, max_pixels))
            if min(width, height) <= short_side:
                return data
            scale = short_side / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            stored = size if image.size == (width, height) else (size[1], size[0])  # before the EXIF rotation
            image.draft("RGB", stored)  # a JPEG decodes at 1/2, 1/4 or 1/8 scale when that suffices
            picture = to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return data
    buffer = io.BytesIO()
    picture.resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=STORED_JPEG_QUALITY)
    return buffer.getvalue()
