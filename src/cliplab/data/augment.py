"""Training-time image augmentation: random resized crops, colour jitter and horizontal flips.

Every draw comes from a generator seeded by the caller's keys (the run's seed, the sample's stream
position or the cached view's number, the item), so an augmented image is a pure function of those
keys: a killed and resumed run sees the same images as an uninterrupted one, and a locked tower's
cached view ``v`` of an image is the same image every time it is computed.

A caption that says *left* or *right* is never flipped (the flipped picture would contradict it).
View 0 is always the plain image: a feature cache's first view is what inference sees.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ["AugmentConfig", "Augmenter", "augment_image", "augment_rng", "mentions_side"]

_SIDE_WORDS = re.compile(r"\b(left|right|lefthand|righthand|leftward|rightward)s?\b", re.IGNORECASE)


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment_image` may do. ``crop_scale``: the crop's share of the image area;
    ``crop_ratio``: its aspect ratio range; ``brightness``/``contrast``/``saturation``: the jitter's
    relative strength (0: off); ``flip``: mirror half the images (never one whose caption names a side)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    flip: bool = True

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"augment crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augment crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment {name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown augment keys {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def key(self) -> str:
        """A short stable name of these settings (part of a feature cache's key)."""
        text = repr(sorted(self.to_dict().items()))
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def mentions_side(caption: str) -> bool:
    """Whether ``caption`` names a side (left, right): such an image must not be mirrored."""
    return bool(_SIDE_WORDS.search(caption))


def augment_rng(*keys: int | str) -> np.random.Generator:
    """The generator of one augmented image, from integer or string keys (strings are hashed)."""
    entropy = [
        int(k) % (1 << 64)
        if isinstance(k, int)
        else int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little")
        for k in keys
    ]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _crop_box(width: int, height: int, config: AugmentConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop of ``crop_scale`` of the area with an aspect ratio in ``crop_ratio`` (log-uniform),
    as torchvision's RandomResizedCrop draws it; the centred largest fitting crop after ten misses."""
    area = width * height
    log_low, log_high = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*config.crop_scale)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def augment_image(image: Image.Image, caption: str, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """``image`` cropped, jittered and maybe mirrored as ``rng`` draws (the same draws for the same
    generator state). The result keeps the crop's size; preprocessing resizes it afterwards."""
    image = image.convert("RGB")
    image = image.crop(_crop_box(image.width, image.height, config, rng))
    factors = [
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ]
    order = rng.permutation(len(factors))
    draws = rng.uniform(-1.0, 1.0, size=len(factors))
    for i in order:
        enhancer, strength = factors[i]
        if strength > 0:
            image = enhancer(image).enhance(1.0 + strength * float(draws[i]))
    mirror = bool(rng.random() < 0.5)
    if config.flip and mirror and not mentions_side(caption):
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


class Augmenter:
    """On-the-fly augmentation of a rank's stream: the image at stream position ``q`` is augmented
    from a generator keyed by ``(seed, rank, q)``, so it does not depend on workers or on resuming."""

    def __init__(self, config: AugmentConfig, seed: int, rank: int = 0) -> None:
        self.config, self.seed, self.rank = config, int(seed), int(rank)

    def __call__(self, image: Any, caption: str, position: int) -> Any:
        rng = augment_rng(self.seed, "stream", self.rank, position)
        return augment_image(image, caption, self.config, rng)
