"""What a :class:`~cliplab.index.search.Searcher` searches: a local store folder, or a Milvus collection.

A backend has a ``store`` (items by id, the model, ``stats()``: what the service shows), ``refresh()``
(see what was committed since) and ``search(kind, queries, k) -> (scores, ids)``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    store: Any  # a Store, or a MilvusStore with the same reading methods

    def refresh(self) -> None: ...

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def open_backend(target: str | os.PathLike | object) -> Backend:
    """A Milvus collection for a :class:`~cliplab.index.milvus.MilvusCollection` or a ``milvus://`` URI,
    else the local store folder ``target``."""
    from ..milvus import MilvusCollection

    if isinstance(target, str) and target.startswith(("milvus://", "milvus+")):
        target = MilvusCollection.from_uri(target)
    if isinstance(target, MilvusCollection):
        from .milvus import MilvusBackend

        return MilvusBackend(target)
    from .local import LocalBackend

    return LocalBackend(target)  # type: ignore[arg-type]
