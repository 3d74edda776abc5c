"""The compressed index for large stores: OPQ + IVF (HNSW coarse quantizer) + PQ codes in inverted
lists on disk, re-ranked with the store's finer codes (:mod:`cliplab.index.vector_codes`).

Per vector it costs ``m + 8`` bytes in the inverted lists (``m`` = 32 PQ bytes for 512-d, the 8-byte
id) plus the store's own 256-byte code, which serves both as the store's copy of the vector and as
the re-ranking code: about 300 bytes in all, against 2 KB for float32 in SQLite.

The build is made of steps that each leave files behind, so a killed build resumes where it stopped:

1. **train** (``trained.index``): OPQ rotation, the coarse centroids by two-level k-means (k-means
   over 65k centroids in one level would take hours on two cores), an HNSW graph over them, and
   the PQ of the residuals. One sample of the data, in RAM.
2. **shards** (``shards/shard-00012.index``): each chunk of :data:`SHARD_ROWS` vectors is added to a
   copy of the trained index in RAM and written out; a chunk takes minutes.
3. **merge** (``gen-000003/index`` + ``lists.ivfdata``): FAISS's ``OnDiskInvertedLists`` gathers the
   shards' lists into one file that searches memory-map; only the lists they touch are read.
4. **tune**: ``nprobe`` and the re-ranking depth, the cheapest pair reaching the recall target
   against exact search on the store's own vectors (leave-one-out) and, when the store holds the
   other kind, on those as queries (text queries sit apart from every image).

A generation is switched to by replacing ``current.json`` atomically; readers load the new one at
their next refresh, and the previous generation is removed by the next build.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..extras import require
from ..files import atomic_write_bytes, atomic_write_text
from .vector_codes import VectorCodes

if TYPE_CHECKING:
    import faiss
else:
    faiss = require("faiss", "search", "cliplab's search indexes")

COMPRESSED_LIMIT = 1_000_000  # vectors of one kind past which a store switches to this index
SHARD_ROWS = 1_000_000
TARGET_RECALL = 0.95  # recall@10 on the store's own vectors (leave-one-out)
TARGET_RECALL_OTHER = 0.85  # ... and with the other kind's vectors as queries (texts for an image index)
DRIFT_LIMIT = 0.1  # re-train when new vectors sit this much further from their centroids than the training set
_NPROBES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_RERANKS = (2, 4, 8, 16, 32, 64, 128, 256)  # candidates re-ranked per result wanted
_TUNING_K = 10
ADD_EF_SEARCH = 32  # HNSW depth when assigning added vectors to lists (most of a shard's build time)


def choose_nlist(n: int) -> int:
    """About 8 sqrt(n) lists as a power of two (65,536 at 100 M, 32,768 at 10-20 M), at most 262,144,
    and few enough that k-means has 39 training vectors per list."""
    wanted = 2 ** round(math.log2(8 * math.sqrt(max(n, 1))))
    affordable = 2 ** int(math.log2(max(n // 39, 1)))
    return int(max(1, min(wanted, affordable, 262_144)))


def choose_m(dim: int) -> int:
    """PQ bytes per vector in the lists: 16-d sub-vectors from 256-d up (32 for 512-d), 8-d below."""
    for m in ((dim // 16) if dim >= 256 else (dim // 8), dim // 4, dim // 2, dim):
        if m and dim % m == 0:
            return m
    return dim


@dataclass
class CompressedParams:
    """How one generation of a kind's compressed index was built and tuned."""

    kind: str
    type: str = "compressed"
    nlist: int = 0
    m: int = 0
    nprobe: int = 16
    rerank: int = 8  # candidates re-ranked = rerank x k
    ef_search: int = 64
    built_count: int = 0
    built_max_id: int = 0  # every item of the kind with an id up to this was in the build's snapshot
    removal_seq: int = 0  # the store's removals log position at the snapshot
    tuned_recall: float = 0.0
    tuned_recall_other: float | None = None
    coarse_similarity: float = 0.0  # mean similarity of training vectors to their centroid (drift baseline)
    store_created: str = ""
    generation: int = 0
    build_seconds: float = 0.0
    timings: dict = field(default_factory=dict)


# -- training --------------------------------------------------------------------------------------
def two_level_kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 10) -> np.ndarray:
    """``k`` spherical centroids: ``sqrt(k)`` clusters first, then each split in proportion to its
    size, so each iteration costs ``n (sqrt(k) + k/sqrt(k))`` distances rather than ``n k``."""
    n, dim = x.shape
    if k <= 256 or n < 4 * k:
        return _kmeans(x, k, seed, niter)
    k1 = round(math.sqrt(k))
    top = faiss.Kmeans(dim, k1, niter=niter, seed=seed, spherical=True, max_points_per_centroid=n // k1 + 1)
    top.train(x)
    _, assign = top.index.search(x, 1)
    assign = assign.ravel()
    sizes = np.bincount(assign, minlength=k1)
    share = sizes * k / n
    allot = np.minimum(np.floor(share).astype(np.int64), sizes)
    for j in np.argsort(allot - share)[: k - int(allot.sum())]:  # the largest remainders get one more
        allot[j] += 1
    while allot.sum() < k:  # clusters too small to take their share: give the rest to the largest
        allot[np.argmax(sizes - allot)] += 1
    order = np.argsort(assign, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)]
    parts = []
    for j in range(k1):
        if allot[j]:
            parts.append(_kmeans(x[order[starts[j] : starts[j + 1]]], int(allot[j]), seed + 1 + j, niter))
    return np.ascontiguousarray(np.concatenate(parts)[:k], np.float32)


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    if len(x) <= k:
        centroids = np.concatenate([x, x[np.arange(k - len(x)) % len(x)]]) if len(x) else np.zeros((k, x.shape[1]))
        return _unit(centroids)
    if k == 1:
        return _unit(x.mean(0, keepdims=True))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, np.float32))
    return np.asarray(km.centroids, np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_index(sample: np.ndarray, nlist: int, m: int, seed: int = 0) -> tuple[faiss.Index, float, dict]:
    """An empty, trained ``OPQ -> IVF(HNSW quantizer) + PQ`` index for inner product, the mean
    similarity of the sample to its centroids, and the seconds each step took."""
    sample = np.ascontiguousarray(sample, np.float32)
    n, dim = sample.shape
    rng = np.random.default_rng(seed)
    timings = {}
    started = time.perf_counter()
    # OPQ's inner k-means runs on 16-d sub-vectors, where FAISS's matrix products are slow: a 32k
    # sample and 8 iterations (the rotation changes little after that) keep it to about half a minute.
    opq: Any = faiss.OPQMatrix(dim, m)
    opq.niter = 8
    opq.niter_pq_0 = 8
    opq.max_train_points = 16_384
    opq_sample = sample[rng.choice(n, min(n, 16_384), replace=False)]
    opq.train(opq_sample)
    rotated = opq.apply(sample)
    timings["opq_s"] = time.perf_counter() - started

    started = time.perf_counter()
    centroids = two_level_kmeans(rotated, nlist, seed)
    timings["kmeans_s"] = time.perf_counter() - started

    started = time.perf_counter()
    quantizer: Any = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    quantizer.hnsw.efConstruction = 40
    quantizer.add(centroids)
    quantizer.hnsw.efSearch = 64
    ivf: Any = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.pq.cp.seed = seed
    ivf.pq.cp.niter = 10  # 16-d k-means again: 10 iterations on 64 points a centroid
    ivf.pq.cp.max_points_per_centroid = 64
    ivf.train(rotated[rng.choice(n, min(n, 65_536), replace=False)])
    index = faiss.IndexPreTransform(opq, ivf)
    index.own_fields = True
    opq.this.disown()
    ivf.this.disown()
    timings["quantizer_pq_s"] = time.perf_counter() - started
    similarity, _ = quantizer.search(rotated[: min(n, 100_000)], 1)
    return index, float(similarity.mean()), timings


def set_ef_search(index: faiss.Index, ef: int) -> None:
    """The HNSW quantizer's search depth used while adding (how well vectors find their list)."""
    quantizer: Any = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    quantizer.hnsw.efSearch = ef


def coarse_similarity(index: faiss.Index, vectors: np.ndarray) -> float:
    """Mean similarity of ``vectors`` to their nearest coarse centroid (lower than at training: drift)."""
    if not len(vectors):
        return 0.0
    transform: Any = index
    rotated = transform.chain.at(0).apply(np.ascontiguousarray(vectors, np.float32))
    similarity, _ = faiss.extract_index_ivf(index).quantizer.search(rotated, 1)
    return float(similarity.mean())


# -- resumable build -------------------------------------------------------------------------------
class OnDiskBuild:
    """The files of one build in ``folder``: the trained index, one file per shard, merged outputs.

    Every file is written atomically, so a killed build leaves only complete steps behind; calling the
    same steps again skips what is done."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "shards").mkdir(exist_ok=True)

    @property
    def trained_path(self) -> Path:
        return self.folder / "trained.index"

    def shard_path(self, number: int) -> Path:
        return self.folder / "shards" / f"shard-{number:05d}.index"

    def info(self) -> dict:
        path = self.folder / "build.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_info(self, info: dict) -> None:
        atomic_write_text(self.folder / "build.json", json.dumps(info, indent=1))

    def train(self, sample_fn: Callable[[], np.ndarray], nlist: int, m: int, seed: int = 0) -> faiss.Index:
        """The trained index, trained now from ``sample_fn()`` unless a previous run saved it."""
        if not self.trained_path.is_file():
            index, similarity, timings = train_index(sample_fn(), nlist, m, seed)
            atomic_write_bytes(self.trained_path, faiss.serialize_index(index).tobytes())
            self.save_info({**self.info(), "coarse_similarity": similarity, "train_timings": timings})
        return self.trained()

    def trained(self) -> faiss.Index:
        return faiss.read_index(str(self.trained_path))

    def add_shards(
        self,
        chunks: Iterable[tuple[int, Callable[[], tuple[np.ndarray, np.ndarray]]]],
        on_chunk: Callable[[np.ndarray, np.ndarray], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Build each missing shard: ``chunks`` yields ``(shard number, load)`` where ``load()`` gives
        ``(ids, vectors)``; ``on_chunk(ids, vectors)`` runs before the shard is written (the benchmark
        writes the store's codes there). Returns every shard's path in order."""
        paths = []
        template = faiss.serialize_index(self.trained())
        for number, load in chunks:
            path = self.shard_path(number)
            if not path.is_file():
                ids, vectors = load()
                if on_chunk is not None:
                    on_chunk(ids, vectors)
                shard = faiss.deserialize_index(template)
                set_ef_search(shard, ADD_EF_SEARCH)
                shard.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
                atomic_write_bytes(path, faiss.serialize_index(shard).tobytes())
                del shard
            paths.append(path)
            if progress is not None:
                progress(number)
        return paths

    def merge(self, shard_paths: list[Path], out: str | os.PathLike) -> Path:
        """Merge shards into ``out/index`` + ``out/lists.ivfdata`` (redone from scratch if a previous
        merge into ``out`` did not finish)."""
        out = Path(out)
        if (out / "index").is_file():
            return out / "index"
        tmp = out.with_name(out.name + ".merging")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        merge_ondisk(self.trained(), shard_paths, tmp / "lists.ivfdata", tmp / "index")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out / "index"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """FAISS's on-disk lists print progress with printf; keep it off stdout (``--json`` output)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def merge_ondisk(trained: faiss.Index, shard_paths: list[Path], ivfdata: Path, index_path: Path) -> None:
    """The on-disk merge: the shards' inverted lists (memory-mapped, never all in RAM) copied list by
    list into one ``OnDiskInvertedLists`` file, then the index that points to it written. A shard may
    itself be a merged index (a fold adds the new items to the current generation this way)."""
    shards = []
    with _stdout_to_stderr():
        for path in shard_paths:
            # a merged index maps its own lists; a shard's in-RAM lists are memory-mapped by the reader
            merged = (Path(path).parent / "lists.ivfdata").is_file()
            shard = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR if merged else faiss.IO_FLAG_MMAP)
            ivf = faiss.extract_index_ivf(shard)
            shards.append((shard, ivf.invlists))
        output = faiss.extract_index_ivf(trained)
        if trained.ntotal:
            raise ValueError("merge_ondisk needs an empty trained index")
        lists: Any = faiss.OnDiskInvertedLists(output.nlist, output.code_size, str(ivfdata))
        pointers = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]
        for _, invlists in shards:
            pointers.push_back(invlists)
        total = lists.merge_from_multiple(pointers.data(), pointers.size(), False)
        trained.ntotal = output.ntotal = total
        output.replace_invlists(lists, True)
        lists.this.disown()
        faiss.write_index(trained, str(index_path))
    with open(ivfdata, "rb+") as handle:
        os.fsync(handle.fileno())


def read_merged(index_path: str | os.PathLike) -> faiss.Index:
    """A merged index with its lists memory-mapped from ``lists.ivfdata`` in the same folder."""
    with _stdout_to_stderr():
        return faiss.read_index(str(index_path), faiss.IO_FLAG_ONDISK_SAME_DIR)


def in_ram_index(trained: faiss.Index, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> faiss.Index:
    """The same index built in RAM (for comparison with a merged one)."""
    set_ef_search(trained, ADD_EF_SEARCH)
    for ids, vectors in chunks:
        trained.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return trained


# -- searching -------------------------------------------------------------------------------------
class CompressedIndex:
    """Search over a merged index: IVF-PQ candidates, re-ranked with the store's codes, plus the items
    added since the build (``delta``, searched exactly) and minus the removed ones."""

    def __init__(
        self,
        index: faiss.Index | None,
        params: CompressedParams,
        codes: VectorCodes,
        delta_ids: np.ndarray | None = None,
        delta_vectors: np.ndarray | None = None,
        removed: np.ndarray | None = None,
    ):
        self.index = index
        self.params = params
        self.codes = codes
        dim = codes.dim
        self.delta_ids = np.empty(0, np.int64) if delta_ids is None else np.asarray(delta_ids, np.int64)
        self.delta_vectors = np.empty((0, dim), np.float32) if delta_vectors is None else delta_vectors
        self.removed = np.empty(0, np.int64)
        self.seen_seq = params.removal_seq  # the store's removals log read up to here
        self.delta_max = params.built_max_id  # the items above the build read up to this id
        self._selector: tuple | None = None
        self.set_removed(np.empty(0, np.int64) if removed is None else removed)

    def __len__(self) -> int:
        main = int(self.index.ntotal) if self.index is not None else 0
        return main - len(self.removed) + len(self.delta_ids)

    def set_removed(self, removed: np.ndarray) -> None:
        """Ids of the build removed from the store since: never returned."""
        self.removed = np.unique(np.asarray(removed, np.int64))
        if len(self.removed):
            batch = faiss.IDSelectorBatch(len(self.removed), faiss.swig_ptr(self.removed))
            self._selector = (faiss.IDSelectorNot(batch), batch)
        else:
            self._selector = None

    def add_delta(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.delta_ids = np.concatenate([self.delta_ids, np.asarray(ids, np.int64)])
            self.delta_vectors = np.concatenate([self.delta_vectors, np.asarray(vectors, np.float32)])

    def remove_delta(self, ids: np.ndarray) -> None:
        if len(ids):
            keep = ~np.isin(self.delta_ids, ids)
            self.delta_ids, self.delta_vectors = self.delta_ids[keep], self.delta_vectors[keep]

    def _search_params(self, nprobe: int):
        quantizer = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        quantizer.efSearch = max(self.params.ef_search, 2 * nprobe)
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = min(nprobe, self.params.nlist)
        ivf.quantizer_params = quantizer
        if self._selector is not None:
            ivf.sel = self._selector[0]
        params = faiss.SearchParametersPreTransform()
        params.index_params = ivf
        return params, (quantizer, ivf)  # the second element keeps the parameter objects alive

    def candidates(self, queries: np.ndarray, depth: int, nprobe: int | None = None) -> np.ndarray:
        """The ``depth`` best ids by PQ distance, ``-1`` where fewer exist."""
        if self.index is None or self.index.ntotal == 0:
            return np.full((len(queries), 0), -1, np.int64)
        params, _keep = self._search_params(nprobe or self.params.nprobe)
        _, ids = self.index.search(queries, int(depth), params=params)
        return ids

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Score candidates with the decoded store codes; ``(scores [Q, k], ids [Q, k])``, best first."""
        q, depth = candidates.shape
        scores = np.full((q, depth), -np.inf, np.float32)
        valid = candidates >= 0
        if valid.any():
            decoded = self.codes.decode(candidates[valid])
            rows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("nd,nd->n", decoded, queries[rows])
        return _top(scores, candidates, k)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, rerank: int | None = None):
        """``(scores [Q, k], ids [Q, k])`` best first; missing results have id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        k = max(1, int(k))
        depth = max(k, (rerank or self.params.rerank) * k)
        scores_out, ids_out = [], []
        for start in range(0, len(queries), 64):
            chunk = queries[start : start + 64]
            scores, ids = self.rerank(chunk, self.candidates(chunk, depth, nprobe), k)
            if len(self.delta_ids):
                delta_scores = chunk @ self.delta_vectors.T
                scores, ids = _top(
                    np.concatenate([scores, delta_scores], axis=1),
                    np.concatenate([ids, np.broadcast_to(self.delta_ids, delta_scores.shape)], axis=1),
                    k,
                )
            scores_out.append(scores)
            ids_out.append(ids)
        return np.concatenate(scores_out), np.concatenate(ids_out)


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row (ties by id), ``-1`` / ``-inf`` padding."""
    scores = np.where(ids >= 0, scores, -np.inf)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.concatenate([scores, np.full((len(scores), pad), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((len(ids), pad), -1, np.int64)], axis=1)
    order = np.lexsort((ids, -scores), axis=1)[:, :k] if scores.size else np.zeros((len(scores), 0), np.int64)
    top_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
    top_ids = np.take_along_axis(ids, order, 1)
    top_ids[~np.isfinite(top_scores)] = -1
    return top_scores, top_ids


# -- exact ground truth and tuning -----------------------------------------------------------------
def exact_top(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, checkpoints: Iterable[int] = ()
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact inner-product top ``k`` over vectors given in chunks of ``(ids, vectors)``, never all in
    RAM. ``checkpoints``: numbers of vectors seen after which a copy of the running result is kept
    (the ground truth of a prefix of the data). Returns ``(scores, ids, {count: (scores, ids)})``."""
    queries = np.ascontiguousarray(queries, np.float32)
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    marks, kept, seen = sorted(checkpoints), {}, 0
    block = max(1024, 2**27 // max(len(queries), 1))  # at most 512 MB of scores at a time
    for ids, vectors in chunks:
        ids = np.asarray(ids, np.int64)
        for start in range(0, len(ids), block):
            scores = queries @ np.ascontiguousarray(vectors[start : start + block], np.float32).T
            part = min(k, scores.shape[1])
            top = np.argpartition(-scores, part - 1, axis=1)[:, :part]
            best_scores, best_ids = _top(
                np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1),
                np.concatenate([best_ids, ids[start : start + block][top]], axis=1),
                k,
            )
        seen += len(ids)
        for mark in [m for m in marks if m == seen]:
            kept[mark] = (best_scores.copy(), best_ids.copy())
    return best_scores, best_ids, kept


def recall(found: np.ndarray, truth: np.ndarray, own: np.ndarray | None = None, k: int = _TUNING_K) -> float:
    """Mean fraction of each row's ``k`` true neighbours found among its first ``k`` results; with
    ``own``, each query's own id is dropped from both first (leave-one-out)."""
    hits = 0.0
    for i, (f, t) in enumerate(zip(found, truth)):
        if own is not None:
            f, t = f[f != own[i]], t[t != own[i]]
        f, t = f[:k], t[:k]
        t = t[t >= 0]
        hits += len(np.intersect1d(f, t)) / max(len(t), 1)
    return hits / max(len(truth), 1)


@dataclass
class TuningSet:
    """Queries with their exact neighbours (``k + 1`` of them when ``own`` ids are dropped)."""

    queries: np.ndarray
    truth: np.ndarray
    target: float
    own: np.ndarray | None = None


def tune(index: CompressedIndex, sets: list[TuningSet], k: int = _TUNING_K) -> tuple[int, int, list[float]]:
    """The cheapest ``(nprobe, rerank)`` whose recall@k reaches every set's target, with the recalls.

    Cost of a pair: PQ codes scanned (``nprobe`` lists of ``n / nlist``, ``m`` bytes each) plus the
    re-ranked candidates (a code decoded and a 512-d dot product each, counted as 64 PQ codes). If
    no pair reaches the targets, the pair with the best worst-case recall is returned."""
    n = max(int(index.index.ntotal), 1) if index.index is not None else 1
    per_list = n / max(index.params.nlist, 1)
    tried = []  # (cost, margin, nprobe, rerank, recalls)
    extra = 1 if any(s.own is not None for s in sets) else 0
    for nprobe in _NPROBES:
        if nprobe > index.params.nlist and nprobe != _NPROBES[0]:
            break
        found = [index.candidates(s.queries, _RERANKS[-1] * k + extra, nprobe) for s in sets]
        for rerank in _RERANKS:
            recalls = []
            for s, candidates in zip(sets, found):
                _, ids = index.rerank(s.queries, candidates[:, : rerank * k + extra], k + extra)
                recalls.append(recall(ids, s.truth, s.own, k))
            margin = min(r - s.target for r, s in zip(recalls, sets))
            cost = nprobe * per_list * index.params.m + rerank * k * 64 * index.params.m
            tried.append((cost, margin, nprobe, rerank, recalls))
        reached = [t for t in tried if t[1] >= 0]
        if reached and nprobe * per_list * index.params.m > min(reached)[0]:
            break  # every larger nprobe costs more than a pair that already reaches the targets
    reached = [t for t in tried if t[1] >= 0]
    if not reached:  # the codes cap the recall: the cheapest pair within 0.005 of the best one
        best = max(t[1] for t in tried)
        reached = [t for t in tried if t[1] >= best - 0.005]
    _, _, nprobe, rerank, recalls = min(reached, key=lambda t: t[0])
    return int(nprobe), int(rerank), [round(float(r), 4) for r in recalls]


# -- generations in a store ------------------------------------------------------------------------
def kind_folder(store_root: str | os.PathLike, kind: str) -> Path:
    return Path(store_root) / "ann" / f"{kind}.ondisk"


def current_path(store_root: str | os.PathLike, kind: str) -> Path:
    return kind_folder(store_root, kind) / "current.json"


def read_current(store_root: str | os.PathLike, kind: str) -> CompressedParams | None:
    try:
        return CompressedParams(**json.loads(current_path(store_root, kind).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def generation_folder(store_root: str | os.PathLike, kind: str, generation: int) -> Path:
    return kind_folder(store_root, kind) / f"gen-{generation:06d}"


def publish(store_root: str | os.PathLike, params: CompressedParams) -> None:
    """Make ``params.generation`` the one readers load, then remove older generations and builds."""
    folder = kind_folder(store_root, params.kind)
    atomic_write_text(current_path(store_root, params.kind), json.dumps(asdict(params), indent=1))
    for old in folder.glob("gen-*"):
        if old.name != f"gen-{params.generation:06d}":
            shutil.rmtree(old, ignore_errors=True)  # readers that mapped it keep it until they unmap


def chunked(ids: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(ids), rows):
        yield ids[start : start + rows]
