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
"""

from ..identity import model_identity
from .indexer import IndexReport, index_paths
from .search import Hit, Searcher
from .store import ModelMismatchError, Store, StoreError, StoreLockedError

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
