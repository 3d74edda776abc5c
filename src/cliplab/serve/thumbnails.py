"""JPEG thumbnails of stored images, kept in a bounded least-recently-used cache.

A stored item's id names one version of one file (a changed file gets a new id), so a cached
thumbnail never goes stale; the cache is bounded by the bytes it holds.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache

from ..images import thumbnail_jpeg


class ThumbnailCache:
    def __init__(self, max_bytes: int, size: int = 192):
        self.size = size
        self._cache: LRUCache[int, bytes] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._lock = threading.Lock()

    def get(self, item_id: int, path: str) -> bytes | None:
        """The thumbnail of item ``item_id`` (the file at ``path``), or ``None`` if it cannot be read."""
        with self._lock:
            cached = self._cache.get(item_id)
        if cached is not None:
            return cached
        data = thumbnail_jpeg(path, self.size)
        if data is not None and len(data) <= self._cache.maxsize:
            with self._lock:
                self._cache[item_id] = data
        return data

    @property
    def bytes(self) -> int:
        return int(self._cache.currsize)
