"""Reading images: decoding files, bytes and streams with Pillow, and converting any mode to RGB.

Everything that opens an image goes through :func:`load_image` (EXIF orientation applied, first frame
only, Pillow's decompression-bomb limit enforced, errors that name the source) and :func:`to_rgb`
(transparency composited on white, 16-bit and float images rescaled rather than clipped). The
transform a model needs on top of that is :mod:`cliplab.preprocess`.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageLoadError",
    "ImageSource",
    "ImageTooLargeError",
    "load_image",
    "thumbnail_jpeg",
    "to_rgb",
]

#: File extensions (lower case, without the dot) treated as images in folders, stores and shards.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
ImageInput = Union[Image.Image, str, "os.PathLike[str]"]


class ImageLoadError(ValueError):
    """Raised when an input cannot be decoded as an image. The message names the source."""


class ImageTooLargeError(ImageLoadError):
    """Raised when an image exceeds Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""


def _describe_source(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes, os.PathLike)):
        return repr(os.fsdecode(name))
    return f"<{type(source).__name__} object>"


def load_image(source: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Open and decode an image file fully, ready for :func:`to_rgb`.

    Args:
        source: A filesystem path, the encoded bytes, or a binary file object
            (which is read but not closed).
        draft_size: If given, a JPEG is decoded at the smallest of libjpeg's reduced
            scales (1/2, 1/4, 1/8) whose width and height both stay at least this many
            pixels (Pillow's ``Image.draft``): much faster for large photos, not
            bit-identical to a full decode. Other formats ignore it.

    Returns:
        The decoded image in its native mode. EXIF orientation is applied (the
        orientation tag is then removed) and only the first frame of an animated or
        multi-page image is returned.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError: as raised by ``open``.
        ImageTooLargeError: the image declares more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb guard; cliplab
            treats Pillow's warning threshold as an error too).
        ImageLoadError: the data is not a decodable image (unknown format, truncated
            or corrupt file).
    """
    what = _describe_source(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        fp = os.fspath(source)
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if draft_size and im.format == "JPEG":
                    im.draft(im.mode, (draft_size, draft_size))
                im.load()
                # Returns a new, fully loaded single-frame image that outlives the file.
                return ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(
            f"refusing to decode image {what}: it exceeds Pillow's limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS) and may be a decompression bomb ({exc})"
        ) from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports undecodable data as UnidentifiedImageError (an OSError), truncated
        # data as OSError, and some plugins use SyntaxError/ValueError/EOFError for corruption.
        raise ImageLoadError(f"cannot decode image {what}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- modes

_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "PA", "RGBa": "RGBA", "La": "LA"}
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").convert("RGB")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    # round(v * 255 / 65535) == round(v / 257), exactly in integers: 0 -> 0, 65535 -> 255.
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB.

    * "RGB" is returned unchanged; "L", "P", "1", "CMYK", "YCbCr", "HSV", "RGBX" use
      Pillow's ``convert("RGB")`` exactly as the CLIP reference does.
    * Images with transparency -- "RGBA", "LA", "PA", premultiplied "RGBa"/"La", and
      "P"/"L"/"RGB" images with a ``transparency`` entry -- are alpha-composited over
      ``background`` (white by default) instead of having their alpha dropped. This
      deviates from the reference, whose ``convert("RGB")`` exposes the arbitrary colour
      stored under transparent pixels.
    * "I;16" variants map ``0..65535`` linearly onto ``0..255`` (rounded); "I" is treated
      as 16-bit data (clipped to ``0..65535``, then mapped likewise); "F" values in
      ``[0, 1]`` are scaled by 255, any other range is min-max stretched to ``0..255``
      (NaN becomes 0, infinities are clipped to the finite range).

    Raises:
        ValueError: if Pillow cannot convert the mode to RGB.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _UINT16_MODES:
        return _gray_to_rgb(_uint16_to_uint8(np.asarray(image)))
    if mode == "I":
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return _gray_to_rgb(_uint16_to_uint8(values))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            return _gray_to_rgb(np.zeros(values.shape, dtype=np.uint8))
        lo, hi = float(values[finite].min()), float(values[finite].max())
        values = np.clip(np.nan_to_num(values, nan=lo), lo, hi)
        if lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(values)
        return _gray_to_rgb(np.clip(np.rint(scaled), 0, 255))

    if mode in _ALPHA_MODES or "transparency" in image.info:
        try:
            straight = _ALPHA_MODES.get(mode, mode)
            if straight != mode:  # premultiplied "RGBa"/"La": un-premultiply first
                image = image.convert(straight)
            rgba = image.convert("RGBA")
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot convert image mode {mode!r} with alpha to RGB: {exc}") from exc
        base = Image.new("RGBA", rgba.size, (*(int(c) for c in background), 255))
        return Image.alpha_composite(base, rgba).convert("RGB")

    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc


def thumbnail_jpeg(path: str | os.PathLike, size: int = 192, quality: int = 85) -> bytes | None:
    """A JPEG thumbnail (longest side ``size``) of an image file, or ``None`` if it cannot be read."""
    try:
        image = to_rgb(load_image(path, draft_size=size))
    except (OSError, ValueError):
        return None
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
