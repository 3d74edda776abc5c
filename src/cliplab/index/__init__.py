"""Search across images and texts: a persistent, incremental store of embeddings and its indexes.

* :mod:`cliplab.index.store`: the SQLite store (vectors + metadata, crash-safe, one writer);
* :mod:`cliplab.index.scan`: what a run must do (new, changed, deleted files; captions);
* :mod:`cliplab.index.indexer`: ``cliplab index`` (decoding in worker processes, batch commits);
* :mod:`cliplab.index.ann`: FAISS exact and IVF indexes, tuned and kept up to date;
* :mod:`cliplab.index.vector_codes`, :mod:`cliplab.index.ann_ondisk`, :mod:`cliplab.index.compressed`:
  large stores (vectors as codes, the compressed on-disk index, its builds and updates);
* :mod:`cliplab.index.backends`, :mod:`cliplab.index.milvus`: searching a local store or a Milvus collection;
* :mod:`cliplab.index.search`: :class:`Searcher`, queries in every direction;
* :mod:`cliplab.index.distributed`: the Ray path for millions of images.

The names below are imported on first use (PEP 562): searching a store needs neither torch nor the
indexer (a one-shot text query runs on ONNX Runtime, :mod:`cliplab.fast_queries`), while importing
the indexer pulls in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "IndexReport": "cliplab.index.indexer",
    "index_paths": "cliplab.index.indexer",
    "Hit": "cliplab.index.search",
    "Searcher": "cliplab.index.search",
    "ModelMismatchError": "cliplab.index.store",
    "Store": "cliplab.index.store",
    "StoreError": "cliplab.index.store",
    "StoreLockedError": "cliplab.index.store",
    "model_identity": "cliplab.identity",
}

__all__ = [
    "Hit",
    "IndexReport",
    "ModelMismatchError",
    "Searcher",
    "Store",
    "StoreError",
    "StoreLockedError",
    "index_paths",
    "model_identity",
]

if TYPE_CHECKING:
    from ..identity import model_identity
    from .indexer import IndexReport, index_paths
    from .search import Hit, Searcher
    from .store import ModelMismatchError, Store, StoreError, StoreLockedError

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
