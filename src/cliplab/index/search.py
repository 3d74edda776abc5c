"""Search a store in every direction: a text, an image or a stored item against the stored images,
texts, or both. Images and texts live in one embedding space, so each direction is the same
nearest-neighbour search with a different query encoder and target kind."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..identity import model_identity
from ..images import ImageInput
from .ann import VectorIndex, ann_path, open_index, sync_with_store
from .store import Item, Store

KINDS = ("image", "text")
TARGETS = ("image", "text", "all")


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    score: float
    item: Item

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": round(self.score, 6), **self.item.to_dict()}


class Searcher:
    """A store opened for searching with the model it was built with.

    ``pipeline`` is a :class:`cliplab.Pipeline`, or anything with an ``identity`` and the ``embed_texts``
    / ``embed_images`` it is asked for (:class:`cliplab.fast_queries.OnnxTextQueries` embeds texts only).

    ``Searcher(pipeline, "photos.store").text("two dogs in snow", k=10)`` returns :class:`Hit` s.
    ``target`` chooses what is searched: ``image``, ``text`` or ``all``. Call :meth:`refresh` to see
    items committed after opening (the service does so before each query).
    """

    def __init__(self, pipeline, store_dir: str | os.PathLike):
        self.pipeline = pipeline
        self.store = Store(store_dir)
        self.store.check_model(getattr(pipeline, "identity", None) or model_identity(pipeline))
        self._lock = threading.Lock()
        self._indexes: dict[str, VectorIndex] = {}
        self._seen: tuple | None = None  # (data_version, saved index times) at the last refresh
        self.refresh()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _saved_index_times(self) -> tuple:
        times = []
        for kind in KINDS:
            try:
                times.append(ann_path(self.store.root, kind).stat().st_mtime_ns)
            except FileNotFoundError:
                times.append(None)
        return tuple(times)

    def refresh(self) -> None:
        """Bring the in-memory indexes up to date with the store's committed items: cheap when nothing
        changed (one pragma, two stats); new commits are synced in place; a newly saved IVF index
        (written at the end of an indexing run) is loaded."""
        with self._lock:
            version, times = self.store.data_version, self._saved_index_times()
            if self._indexes and (version, times) == self._seen:
                return
            previous_times = self._seen[1] if self._seen else (None,) * len(KINDS)
            for kind, time_now, time_before in zip(KINDS, times, previous_times):
                current = self._indexes.get(kind)
                if current is None or time_now != time_before:
                    self._indexes[kind] = open_index(self.store, kind)
                else:
                    sync_with_store(current, self.store, kind)
            self._seen = (version, times)

    # -- queries ------------------------------------------------------------------------------
    def text(self, query: str, k: int = 10, target: str = "image") -> list[Hit]:
        if not query.strip():
            raise ValueError("the text query is empty")
        return self.vector(self.pipeline.embed_texts([query])[0], k, target)

    def image(self, image: ImageInput, k: int = 10, target: str = "image") -> list[Hit]:
        return self.vector(self.pipeline.embed_images([image])[0], k, target)

    def item(self, item_id: int, k: int = 10, target: str = "image") -> list[Hit]:
        """Neighbours of a stored item (the item itself excluded)."""
        vector = self.store.vector(item_id)
        if vector is None:
            raise KeyError(f"no item with id {item_id} in {self.store.root}")
        hits = [h for h in self.vector(vector, k + 1, target) if h.item.id != int(item_id)]
        return [Hit(rank, h.score, h.item) for rank, h in enumerate(hits[:k], start=1)]

    def vector(self, vector: np.ndarray, k: int = 10, target: str = "image") -> list[Hit]:
        """The ``k`` stored items nearest to an embedding (cosine similarity, best first)."""
        if target not in TARGETS:
            raise ValueError(f"unknown search target {target!r}; choose one of {', '.join(TARGETS)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with self._lock:
            kinds = KINDS if target == "all" else (target,)
            found: list[tuple[float, int]] = []
            for kind in kinds:
                scores, ids = self._indexes[kind].search(query, k)
                found += [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            found.sort(key=lambda pair: (-pair[0], pair[1]))
            found = found[:k]
            items = self.store.items([i for _, i in found])
        return [
            Hit(rank, score, items[i])
            for rank, (score, i) in enumerate(((s, i) for s, i in found if i in items), start=1)
        ]
