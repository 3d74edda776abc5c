"""A Milvus collection filled by ``cliplab index --milvus`` (see :mod:`cliplab.index.milvus`)."""

from __future__ import annotations

import numpy as np

from ..milvus import MilvusCollection, MilvusStore


class MilvusBackend:
    def __init__(self, collection: MilvusCollection):
        self.store = MilvusStore(collection)

    def refresh(self) -> None:
        """Nothing to do: every search reads the collection with strong consistency."""

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.search(kind, queries, k)

    def close(self) -> None:
        self.store.close()
