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

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import ImageInput, load_image, to_rgb

__all__ = ["DRAFT_FACTOR", "MEAN", "STD", "PreprocessConfig", "Preprocessor"]

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
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_INTERPOLATIONS)}")
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
            top = round((height - n) / 2.0)  # Python's round-half-to-even, as torchvision
            left = round((width - n) / 2.0)
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
