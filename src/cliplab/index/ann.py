"""FAISS behind the store: exact inner-product search while a kind (images or texts) is small, an
inverted-file (IVF) index past :data:`EXACT_LIMIT` vectors.

Why IVF rather than HNSW: it is built in seconds on two cores (HNSW takes minutes at a million
512-d vectors), it takes additions and removals without a rebuild, and its one knob (``nprobe``, the
number of lists scanned) can be tuned against exact search on the store's own vectors.

The tuned index is derived data, saved in one file per kind (``ann/image.npz``, ``ann/text.npz``)
by ``cliplab index`` and replaced atomically. Opening a store loads it and brings it up to date
with whatever was committed since (new ids are always larger; removed ids are dropped), so searches
reflect every committed item even while an indexer is running. Until a large kind's first IVF
index is saved, readers search it exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..extras import require
from .store import StoreError

faiss = require("faiss", "search", "cliplab's search indexes")

EXACT_LIMIT = 20_000
TARGET_RECALL = 0.97
# Tuning measures recall with queries like the stored vectors; queries from elsewhere (a text query
# sits apart from all images) need more lists, so the tuned nprobe is multiplied by this margin.
NPROBE_MARGIN = 2
REBUILD_GROWTH = 2.0  # rebuild (re-train the lists) once a kind has grown this much since the build
_NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass
class AnnParams:
    """How a kind's index was built and tuned."""

    kind: str
    type: str  # "flat" or "ivf"
    nlist: int = 0
    nprobe: int = 0
    built_count: int = 0
    tuned_recall: float = 1.0
    store_created: str = ""  # the store's creation stamp: an index never outlives a re-created store


class VectorIndex:
    """Inner-product search over one kind's vectors, returning store ids."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, params: AnnParams):
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        self.params = params

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def max_id(self) -> int:
        return int(self.ids.max()) if len(self.ids) else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])``, best first; missing results have id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), len(self)))
        if len(self) == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if self.params.type == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.params.nprobe
        return self.index.search(queries, k)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
            self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, np.int64))
            self.ids = np.setdiff1d(self.ids, ids, assume_unique=True)

    def sync(self, store_ids: np.ndarray, new_ids: np.ndarray, new_vectors: np.ndarray) -> None:
        """Drop ids the store no longer has and add the store's new ones."""
        self.remove(np.setdiff1d(self.ids, store_ids, assume_unique=True))
        self.add(new_ids, new_vectors)

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the previous file or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                index=faiss.serialize_index(self.index),
                ids=self.ids,
                params=np.frombuffer(json.dumps(asdict(self.params)).encode(), dtype=np.uint8),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> VectorIndex | None:
        """The saved index, or ``None`` if it is missing or unreadable (it is then rebuilt)."""
        try:
            with np.load(path) as data:
                params = AnnParams(**json.loads(data["params"].tobytes().decode()))
                return cls(faiss.deserialize_index(data["index"]), data["ids"], params)
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError):
            return None


def flat_index(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    result = VectorIndex(index, np.empty(0, np.int64), AnnParams(kind, "flat", built_count=len(ids)))
    result.add(ids, vectors)
    return result


def choose_nlist(n: int) -> int:
    """Number of inverted lists: about sqrt(n), a power of two, at most 8192, and few enough that
    k-means has 39 training vectors per list (FAISS's minimum)."""
    return int(max(1, min(8192, 2 ** round(math.log2(math.sqrt(max(n, 1)))), n // 39)))


def ivf_index(
    kind: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    seed: int = 0,
    target_recall: float = TARGET_RECALL,
    other_queries: np.ndarray | None = None,
    nprobe_margin: int = NPROBE_MARGIN,
) -> VectorIndex:
    """Train an IVF-Flat index on the vectors, add them, and tune ``nprobe`` for ``target_recall``@10.

    ``other_queries``: queries of another kind (the store's texts when indexing its images, and the
    reverse). They sit apart from the stored vectors and need more lists; ``nprobe`` is then the larger
    of what they need and the leave-one-out figure multiplied by ``nprobe_margin``.
    """
    n, dim = vectors.shape
    nlist = choose_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else vectors
    index.cp.niter = 10
    index.cp.seed = seed
    index.train(np.ascontiguousarray(sample, np.float32))
    result = VectorIndex(index, np.empty(0, np.int64), AnnParams(kind, "ivf", nlist=nlist, built_count=n))
    result.add(ids, vectors)
    nprobe, result.params.tuned_recall = tune_nprobe(result, vectors, target_recall, rng)
    nprobe = min(nlist, nprobe_margin * nprobe)
    if other_queries is not None and len(other_queries):
        cross, cross_recall = tune_nprobe(result, vectors, target_recall, rng, queries=other_queries)
        if cross > nprobe:
            nprobe, result.params.tuned_recall = cross, cross_recall
    result.params.nprobe = nprobe
    return result


def tune_nprobe(
    index: VectorIndex,
    vectors: np.ndarray,
    target_recall: float,
    rng: np.random.Generator,
    n_queries: int = 500,
    k: int = 10,
    queries: np.ndarray | None = None,
) -> tuple[int, float]:
    """The smallest ``nprobe`` whose recall@k against exact search reaches ``target_recall``.

    Without ``queries`` it is measured leave-one-out: sampled stored vectors are the queries and each
    one's own entry is left out of both result lists, so a query behaves like a new vector from the
    same distribution rather than one that trivially finds itself.
    """
    n, dim = vectors.shape
    if queries is None:
        rows = rng.choice(n, size=min(n, n_queries), replace=False)
        queries, own = np.ascontiguousarray(vectors[rows], np.float32), index.ids[rows]
    else:
        picks = rng.choice(len(queries), size=min(len(queries), n_queries), replace=False)
        queries, own = np.ascontiguousarray(queries[picks], np.float32), np.full(len(picks), -2)
    exact = faiss.IndexFlatIP(dim)
    exact.add(np.ascontiguousarray(vectors, np.float32))
    _, truth = exact.search(queries, k + 1)
    truth = _drop_self(index.ids[truth], own, k)
    recall = 0.0
    for nprobe in _NPROBES:
        if nprobe > index.params.nlist:
            break
        index.params.nprobe = nprobe
        _, found = index.search(queries, k + 1)
        recall = recall_at_k(_drop_self(found, own, k), truth)
        if recall >= target_recall:
            return nprobe, recall
    return index.params.nprobe, recall


def _drop_self(found: np.ndarray, own_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` without the query's own id, cut to ``k`` columns."""
    return np.stack([row[row != own][:k] for row, own in zip(found, own_ids)])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` present in the same row of ``found``."""
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth))
    return hits / truth.size


def build_index(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    """Exact search below :data:`EXACT_LIMIT` vectors, a tuned IVF index above."""
    if len(ids) < EXACT_LIMIT:
        return flat_index(kind, ids, vectors)
    return ivf_index(kind, ids, vectors)


def ann_path(store_root: Path, kind: str) -> Path:
    return Path(store_root) / "ann" / f"{kind}.npz"


def load_saved(store, kind: str) -> VectorIndex | None:
    """The saved index of one kind, if there is one and it belongs to this store."""
    saved = VectorIndex.load(ann_path(store.root, kind))
    if saved is None or saved.params.store_created != (store.meta("created") or ""):
        return None
    return saved


def sync_with_store(index: VectorIndex, store, kind: str) -> None:
    """Bring ``index`` up to date with the store's committed items, read in one snapshot."""
    ids, (new_ids, new_vectors) = store.snapshot(lambda: (store.ids(kind), store.vectors(kind, after_id=index.max_id)))
    index.sync(ids, new_ids, new_vectors)


def open_index(store, kind: str) -> VectorIndex:
    """The search index of one kind, up to date with the store's committed items: the saved IVF index
    when there is one, otherwise exact search (also for a large kind whose first indexing run has not
    yet saved its IVF index: training one per reader would stall it)."""
    saved = load_saved(store, kind) if store.count(kind) >= EXACT_LIMIT else None
    if saved is not None:
        sync_with_store(saved, store, kind)
        return saved
    ids, vectors = store.vectors(kind)
    return flat_index(kind, ids, vectors)


def refresh_indexes(store) -> dict[str, AnnParams]:
    """After an indexing run: bring each kind's saved index up to date, rebuilding it when the kind
    crossed :data:`EXACT_LIMIT` or grew by :data:`REBUILD_GROWTH` since it was built."""
    params = {}
    for kind in ("image", "text"):
        path = ann_path(store.root, kind)
        count = store.count(kind)
        if count < EXACT_LIMIT:
            path.unlink(missing_ok=True)
            params[kind] = AnnParams(kind, "flat", built_count=count)
            continue
        saved = load_saved(store, kind)
        if saved is None or saved.params.type != "ivf" or count > REBUILD_GROWTH * saved.params.built_count:
            ids, vectors = store.vectors(kind)
            other = "text" if kind == "image" else "image"
            other_queries = store.vectors(other)[1][:2000] if store.count(other) >= 50 else None
            index = ivf_index(kind, ids, vectors, other_queries=other_queries)
        else:
            index = saved
            sync_with_store(index, store, kind)
        index.params.store_created = store.meta("created") or ""
        try:
            index.save(path)
        except OSError as error:
            path.with_suffix(".tmp.npz").unlink(missing_ok=True)
            raise StoreError(
                f"cannot write the search index {path} ({error}); the store's items are intact and "
                "searches rebuild the index in memory. Free some space and run `cliplab index` "
                "again."
            ) from None
        params[kind] = index.params
    return params
