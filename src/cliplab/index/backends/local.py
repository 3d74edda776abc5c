"""A local store folder: per kind, exact search, an IVF index in RAM, or the compressed on-disk index
(:mod:`cliplab.index.compressed`) for large stores; kept in sync with the store's commits."""

from __future__ import annotations

import os

import numpy as np

from .. import ann, ann_ondisk
from ..ann import VectorIndex
from ..ann_ondisk import CompressedIndex
from ..compressed import open_compressed, sync_compressed
from ..store import Store

KINDS = ("image", "text")


def open_kind(store: Store, kind: str) -> VectorIndex | CompressedIndex:
    """The published compressed index of a large kind in the ``codes`` layout, else what
    :func:`cliplab.index.ann.open_index` gives (also while a first compressed build is under way)."""
    if store.layout == "codes" and store.count(kind) >= ann.EXACT_LIMIT:
        compressed = open_compressed(store, kind)
        if compressed is not None:
            return compressed
    return ann.open_index(store, kind)


def sync_kind(index: VectorIndex | CompressedIndex, store: Store, kind: str) -> None:
    if isinstance(index, CompressedIndex):
        sync_compressed(index, store, kind)
    else:
        ann.sync_with_store(index, store, kind)


class LocalBackend:
    def __init__(self, store_dir: str | os.PathLike):
        self.store = Store(store_dir)
        self._indexes: dict[str, VectorIndex | CompressedIndex] = {}
        self._seen: tuple | None = None  # (data_version, saved index times) at the last refresh

    def close(self) -> None:
        self.store.close()

    def _saved_index_times(self) -> tuple:
        times: list[int | None] = []
        for kind in KINDS:
            for path in (ann.ann_path(self.store.root, kind), ann_ondisk.current_path(self.store.root, kind)):
                try:
                    times.append(path.stat().st_mtime_ns)
                except FileNotFoundError:
                    times.append(None)
        return tuple(times)

    def refresh(self) -> None:
        """Cheap when nothing changed (one pragma, four stats); new commits are synced in place; a newly
        saved index (written at the end of an indexing run) is loaded."""
        version, times = self.store.data_version, self._saved_index_times()
        if self._indexes and (version, times) == self._seen:
            return
        before = self._seen[1] if self._seen else (None,) * len(times)
        for number, kind in enumerate(KINDS):
            current = self._indexes.get(kind)
            changed = times[2 * number : 2 * number + 2] != before[2 * number : 2 * number + 2]
            if current is None or changed:
                self._indexes[kind] = open_kind(self.store, kind)
            else:
                sync_kind(current, self.store, kind)
        self._seen = (version, times)

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._indexes[kind]
        if len(index) == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        return index.search(queries, k)
