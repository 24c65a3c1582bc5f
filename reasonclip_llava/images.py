"""The one image-loading rule: every path that turns an image file into pixels calls `load_image`.

Training (LLaVA conversations, pretraining parquet / webdataset rows), evaluation (VQA generation,
encoder benchmarks) and the demo all read images here, so the same file gives the same RGB image, and
hence the same `pixel_values`, whichever path reads it. The rule:

1. Decompression-bomb limit: an image with more than `MAX_IMAGE_PIXELS` pixels (PIL's own default,
   89,478,485 = 1024 x 1024 x 1024 / 4 / 3) is refused from its header, before any decoding.
2. EXIF orientation is applied (a phone photo stored sideways is read upright).
3. Mode conversion to RGB:
   * transparency (RGBA, LA, PA, P or L / RGB with a `transparency` key): composited on white, exactly as
     transformers' `convert_to_rgb` does, so the processor given the raw file sees the same pixels;
   * 16-bit (I;16, I;16B, I;16L) and 32-bit integer (I) images: read as 16-bit, scaled to 8 bit
     (v / 257, rounded; I is clipped to [0, 65535]). PIL's own convert('RGB') clips them at 255, which
     turns a normal 16-bit photo white;
   * float (F): read as [0, 1] (the float-image convention), clipped, x 255, rounded (PIL's convert
     would read it as [0, 255], turning a [0, 1] image black);
   * everything else (L, 1, P, CMYK, YCbCr, RGBX, ...): PIL's convert('RGB'), as transformers.
4. Errors are one line naming the owner (a sample, question or item) and the file: FileNotFoundError for a
   missing file, ValueError for anything unreadable (truncated, not an image, over the pixel limit).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height

ImageSource = str | Path | IO[bytes]


def has_transparency(image: Image.Image) -> bool:
    """transformers' convert_to_rgb test: an alpha band, or a `transparency` key (P / L / RGB colour key)."""
    return "A" in image.getbands() or image.info.get("transparency") is not None


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB by the module's rule (transparency on white, 16-bit / float scaled to 8 bit)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        image = Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    if has_transparency(image):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"{width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                         "(a decompression bomb?); raise reasonclip_llava.images.MAX_IMAGE_PIXELS if it is genuine")


def _open(source: ImageSource) -> Image.Image:
    # PIL warns above its MAX_IMAGE_PIXELS and raises at twice that; our own limit decides instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def _error_line(owner: str | None, source: Any, error: BaseException) -> str:
    prefix = f"{owner}: " if owner else ""
    detail = " ".join(str(error).split()) or type(error).__name__
    if isinstance(source, (str, Path)):
        return f"{prefix}cannot read image {source}: {detail}"
    return f"{prefix}cannot decode the embedded image bytes: {detail}"


def load_image(source: ImageSource, owner: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """A fully decoded RGB image from a path or a binary file object, by the module's rule.

    owner: who the image belongs to ("sample '0001'", "question 7"), the start of every error line.
    max_pixels: the decompression-bomb limit (default MAX_IMAGE_PIXELS, read at call time).
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with _open(source) as raw:
            _check_pixels(raw, limit)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                upright = ImageOps.exif_transpose(raw)  # a copy (decoded); the file closes on exit
            image = to_rgb(upright)
            image.load()
            return image
    except FileNotFoundError:
        prefix = f"{owner}: " if owner else ""
        raise FileNotFoundError(f"{prefix}image not found: {source}") from None
    except IMAGE_ERRORS as error:
        raise ValueError(_error_line(owner, source, error)) from None


def image_size(source: ImageSource, owner: str | None = None) -> tuple[int, int]:
    """(width, height) as load_image returns the image (EXIF orientation applied), from the header only."""
    try:
        with _open(source) as raw:
            width, height = raw.size
            if raw.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            return width, height
    except FileNotFoundError:
        prefix = f"{owner}: " if owner else ""
        raise FileNotFoundError(f"{prefix}image not found: {source}") from None
    except IMAGE_ERRORS as error:
        raise ValueError(_error_line(owner, source, error)) from None
