"""The feature cache of locked towers: a locked tower's features are computed once, stored on disk
and read back by every later run that needs them.

An entry is keyed by the three things its value depends on:

* the tower's fingerprint (:func:`cliplab.model.towers.fingerprint.tower_fingerprint`: architecture,
  weights, preprocessing or tokenizer);
* the input's content hash (the image file's bytes, the caption's text), so a changed file is
  recomputed even under the same name, and a renamed one is not;
* the view: ``plain`` for the image as inference sees it, or the augmentation settings, the seed and
  the view number of an augmented view (:mod:`cliplab.data.augment`), plus the precision.

Layout: ``ROOT/<tower fingerprint>/<view key>.npz`` holding ``keys`` (content hashes) and
``features`` (float32), replaced atomically when new entries are added. Nothing is ever reused
under another key, so a stale entry can only be unused, never wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.augment import AugmentConfig, augment_image, augment_rng
from ..images import load_image

__all__ = ["FeatureCache", "content_hash", "image_features", "text_features", "view_key"]


def content_hash(path: str | os.PathLike) -> str:
    """The hex digest of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def view_key(view: int, augment: AugmentConfig | None, seed: int, precision: str) -> str:
    """The cache key of one view: ``plain`` (view 0, or no augmentation) or the augmented view's
    settings, seed and number; the precision the features were computed in either way."""
    if view == 0 or augment is None:
        return f"plain-{precision}"
    return f"aug{augment.key()}-seed{seed}-view{view}-{precision}"


class FeatureCache:
    """The cached features of one tower under one view key."""

    def __init__(self, root: str | os.PathLike, tower_fingerprint: str, key: str) -> None:
        self.path = Path(root) / tower_fingerprint / f"{key}.npz"
        self._rows: dict[str, int] = {}
        self._features = np.zeros((0, 0), dtype=np.float32)
        if self.path.is_file():
            with np.load(self.path) as data:
                self._features = data["features"]
                self._rows = {str(k): i for i, k in enumerate(data["keys"])}

    def __len__(self) -> int:
        return len(self._rows)

    def missing(self, keys: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(k for k in keys if k not in self._rows))

    def add(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store ``features`` (one row per key) and write the file atomically."""
        if not len(keys):
            return
        features = np.asarray(features, dtype=np.float32)
        start = len(self._rows)
        old = self._features if len(self._rows) else np.zeros((0, features.shape[1]), np.float32)
        self._features = np.concatenate([old, features])
        self._rows.update({k: start + i for i, k in enumerate(keys)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
        ordered = sorted(self._rows, key=self._rows.__getitem__)
        np.savez(tmp, keys=np.array(ordered), features=self._features)
        os.replace(tmp, self.path)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self._features[[self._rows[k] for k in keys]]


def _compute_missing(
    cache: FeatureCache,
    keys: Sequence[str],
    inputs: Callable[[list[int]], Any],
    encode: Callable[[Any], torch.Tensor],
    batch_size: int,
    desc: str,
    progress: bool,
) -> np.ndarray:
    """Fill ``cache`` with the features of the keys it lacks (``inputs(indices)`` builds a batch of the
    items at those indices, ``encode`` runs the tower on it) and return the features of all ``keys``."""
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_index.setdefault(key, i)
    todo = [first_index[k] for k in cache.missing(keys)]
    if todo:
        done_keys: list[str] = []
        chunks: list[np.ndarray] = []
        bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not progress)
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            with torch.no_grad():
                chunks.append(encode(inputs(part)).float().cpu().numpy())
            done_keys += [keys[i] for i in part]
            bar.update(len(part))
        bar.close()
        cache.add(done_keys, np.concatenate(chunks))
    return cache.get(keys)


def image_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Any,
    images: Sequence[str],
    captions: Sequence[str],
    cache: FeatureCache,
    view: int = 0,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    hashes: Sequence[str] | None = None,
) -> np.ndarray:
    """The features ``encode`` (a locked image tower, before its head) gives ``images`` under ``view``,
    from ``cache`` where present. View ``v > 0`` augments each image from a generator keyed by
    ``(seed, v, content hash)``, with its caption to tell whether it may be mirrored."""
    keys = list(hashes) if hashes is not None else [content_hash(p) for p in images]

    def one(i: int) -> Any:
        picture = load_image(images[i])
        if view > 0 and augment is not None:
            picture = augment_image(picture, captions[i], augment, augment_rng(seed, "view", view, keys[i]))
        return picture

    def inputs(indices: list[int]) -> torch.Tensor:
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # Pillow releases the GIL
            return preprocess.batch(list(pool.map(one, indices)))

    return _compute_missing(cache, keys, inputs, encode, batch_size, f"image features (view {view})", progress)


def text_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Any,
    captions: Sequence[str],
    cache: FeatureCache,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """The features ``encode`` (a locked text tower, before its head) gives ``captions``."""
    keys = [text_hash(c) for c in captions]

    def inputs(indices: list[int]) -> torch.Tensor:
        return tokenizer([captions[i] for i in indices])

    return _compute_missing(cache, keys, inputs, encode, batch_size, "text features", progress)
