"""Image preprocessing for CLIP models.

This module reproduces the evaluation transform of OpenAI CLIP (``clip._transform``)
and of OpenCLIP (``open_clip.image_transform(n, is_train=False)``) using only PIL,
numpy and torch -- torchvision is not needed.

The reference pipeline for a target size ``n`` is:

1. resize the shortest side to ``n`` with PIL bicubic resampling; the long side becomes
   ``int(n * long / short)`` (truncation, as torchvision computes it);
2. crop an ``n x n`` square from the centre; the top/left offset is
   ``int(round((side - n) / 2.0))`` (Python's round-half-to-even, as torchvision);
3. ``convert("RGB")``;
4. convert to a float32 CHW tensor in ``[0, 1]`` (``uint8 / 255``);
5. normalise per channel, ``(x - mean) / std``, in float32.

cliplab runs the same operations with the same arithmetic, so for RGB and 8-bit
grayscale ("L") images its output is bit-identical to the reference.

Deliberate deviations (all concern images that are not plain RGB/L):

* **Colour conversion happens first**, before resizing (the reference converts last).
  For RGB this changes nothing, and for "L" it changes nothing either, because Pillow
  resamples each 8-bit band independently with identical arithmetic. For palette ("P")
  and bilevel ("1") images it is an improvement: Pillow silently downgrades any
  resampling filter to nearest-neighbour for those modes, so the reference effectively
  resizes them without interpolation, whereas cliplab resizes the RGB pixels bicubically.
* **Transparency is composited on a white background** (RGBA, LA, La, RGBa, PA, and
  P/L/RGB images carrying a ``transparency`` key). The reference's ``convert("RGB")``
  simply drops alpha, exposing whatever colour the encoder stored under transparent
  pixels (often black, sometimes garbage).
* **High bit-depth grayscale is rescaled, not clipped**: "I;16" (and its byte-order
  variants) map ``0..65535`` onto ``0..255``; "I" is interpreted with the same 16-bit
  convention (values clipped to ``0..65535`` first); "F" images in ``[0, 1]`` are scaled
  by 255, other float ranges are min-max stretched. Pillow's ``convert("RGB")`` would clip
  every value above 255 to white.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "MEAN",
    "STD",
    "ImageLoadError",
    "ImageTooLargeError",
    "PreprocessConfig",
    "Preprocessor",
    "load_image",
    "to_rgb",
]

#: Per-channel mean of the OpenAI CLIP training images (RGB order).
MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
#: Per-channel standard deviation of the OpenAI CLIP training images (RGB order).
STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_RESIZE_MODES = ("shortest", "squash")
#: With ``Preprocessor(draft=True)``, JPEGs are decoded at no less than this multiple of the output size.
DRAFT_FACTOR = 2

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
ImageInput = Union[Image.Image, str, "os.PathLike[str]"]


class ImageLoadError(ValueError):
    """Raised when an input cannot be decoded as an image. The message names the source."""


class ImageTooLargeError(ImageLoadError):
    """Raised when an image exceeds Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the evaluation transform.

    Attributes:
        image_size: Side of the square output, in pixels.
        mean: Per-channel mean subtracted after scaling to ``[0, 1]``.
        std: Per-channel standard deviation divided by after subtracting ``mean``.
        interpolation: PIL resampling filter name: ``"bicubic"`` (CLIP's choice),
            ``"bilinear"``, ``"nearest"``, ``"lanczos"``, ``"box"`` or ``"hamming"``.
        resize_mode: ``"shortest"`` resizes the shortest side to ``image_size`` and
            centre-crops (OpenAI CLIP); ``"squash"`` resizes straight to
            ``image_size x image_size`` ignoring the aspect ratio (some OpenCLIP models).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)):
            raise TypeError(f"image_size must be an int, got {self.image_size!r}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        object.__setattr__(self, "image_size", int(self.image_size))
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {value!r}")
            object.__setattr__(self, name, value)
        if any(s == 0.0 for s in self.std):
            raise ValueError(f"std must not contain zeros, got {self.std!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_INTERPOLATIONS)}"
            )
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; expected one of {_RESIZE_MODES}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build a config from a mapping such as the output of :meth:`to_dict`.

        Missing keys take their defaults; unknown keys raise ``ValueError``.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {unknown}; expected a subset of {sorted(known)}")
        kwargs = dict(data)
        for name in ("mean", "std"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- transform


def _shortest_side_size(width: int, height: int, n: int) -> tuple[int, int]:
    """Output (width, height) when the shortest side is resized to ``n`` (torchvision's rule)."""
    if width <= height:
        return n, int(n * height / width)
    return int(n * width / height), n


class Preprocessor:
    """CLIP evaluation transform: PIL image -> normalised ``float32`` tensor ``[3, n, n]``.

    Construct it from a :class:`PreprocessConfig` or from the config's fields::

        pre = Preprocessor(PreprocessConfig(image_size=336))
        pre = Preprocessor(image_size=224)

    ``draft=True`` decodes JPEG files (given as paths or bytes) at a reduced scale, still at
    least ``DRAFT_FACTOR`` times the output size: several times faster on camera photos,
    with embeddings of cosine > 0.999 to the exact path in cliplab's measurements
    (``benchmarks/bench_inference.py``), but not bit-identical, so it is opt-in.

    The pipeline is :func:`to_rgb`, resize, centre crop, scale to ``[0, 1]`` and
    normalise; see the module docstring for its exact arithmetic and its deviations
    from the reference for non-RGB inputs.
    """

    def __init__(self, config: PreprocessConfig | None = None, *, draft: bool = False, **overrides: Any) -> None:
        if config is None:
            config = PreprocessConfig(**overrides)
        elif overrides:
            config = PreprocessConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self._resample = _INTERPOLATIONS[config.interpolation]
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
        #: Decode JPEG files at a reduced scale, at least ``DRAFT_FACTOR x image_size`` on the short side
        #: (see :func:`load_image`); off by default, as its output is close to, not equal to, the reference.
        self.draft_size = DRAFT_FACTOR * config.image_size if draft else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @property
    def image_size(self) -> int:
        """Side of the square output."""
        return self.config.image_size

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Resize and crop an RGB PIL image to ``image_size x image_size`` (no normalisation)."""
        n = self.config.image_size
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ValueError(f"image has an empty size {image.size}")
        if self.config.resize_mode == "squash":
            target = (n, n)
        else:
            target = _shortest_side_size(width, height, n)
        if image.size != target:
            image = image.resize(target, self._resample)
        if self.config.resize_mode == "shortest":
            width, height = image.size
            top = int(round((height - n) / 2.0))
            left = int(round((width - n) / 2.0))
            if (left, top, width, height) != (0, 0, n, n):
                image = image.crop((left, top, left + n, top + n))
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Scale an 8-bit RGB image to ``[0, 1]`` and normalise it: ``[3, H, W]`` float32."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
        return self.normalize(np.array(image, dtype=np.uint8)[None])[0]  # HWC, owned copy

    def __call__(self, image: ImageInput) -> torch.Tensor:
        """Preprocess one image (a PIL image, or a path loaded with :func:`load_image`).

        Returns:
            ``float32`` tensor of shape ``[3, image_size, image_size]``.
        """
        if not isinstance(image, Image.Image):
            image = load_image(image, self.draft_size)
        return self.to_tensor(self.resize_and_crop(to_rgb(image)))

    def crop(self, image: ImageInput) -> np.ndarray:
        """Load, convert and resize one image: ``uint8`` ``[n, n, 3]``, before normalisation."""
        if not isinstance(image, Image.Image):
            image = load_image(image, self.draft_size)
        return np.asarray(self.resize_and_crop(to_rgb(image)), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8`` ``[N, n, n, 3]`` -> normalised ``float32`` ``[N, 3, n, n]``, the same numbers as
        :meth:`to_tensor` per image, in one vectorised pass."""
        x = torch.as_tensor(pixels).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return x.sub_(self._mean).div_(self._std).contiguous()

    def batch(self, images: Sequence[ImageInput], pin_memory: bool = False, threads: int | None = None) -> torch.Tensor:
        """Preprocess several images (PIL images and/or paths) into ``[N, 3, n, n]``.

        The images are decoded and resized by ``threads`` threads (default: torch's thread count; Pillow
        releases the GIL), then normalised in one pass. The result does not depend on ``threads``.
        ``pin_memory=True`` returns page-locked memory, for asynchronous copies to a CUDA device.
        Raises what :meth:`crop` raises for the first image, in order, that cannot be read.
        """
        n = self.config.image_size
        if len(images) == 0:
            return torch.empty((0, 3, n, n), dtype=torch.float32)
        threads = min(len(images), threads or torch.get_num_threads())
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                crops = list(pool.map(self.crop, images))
        else:
            crops = [self.crop(image) for image in images]
        batch = self.normalize(np.stack(crops))
        return batch.pin_memory() if pin_memory else batch
