"""A store's compressed index, kind by kind: built (resumably) by the writer at the end of an indexing
run, opened and kept in sync by readers.

* **Readers** load the published generation (``ann/<kind>.ondisk/current.json``), memory-map its lists,
  and hold in RAM only what changed since its build: items added since (searched exactly, so they
  are found at once) and the ids removed since (skipped inside the list scan). A refresh reads
  those from the primary-key range above the build and from the store's removals log: it costs the
  same at a thousand items as at a hundred million.
* **The writer** folds the added items into a new generation once they are
  :data:`FOLD_FRACTION` of the index (the trained quantizer is kept; the lists are merged on disk), and
  re-trains from scratch when the kind has doubled, a fifth of it was removed, or new vectors sit
  further from the centroids than the training set did (drift).

A build lives in ``ann/<kind>.ondisk/build/`` until it is published; a killed build leaves the previous
generation in use and carries on from its last finished shard on the next run.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..extras import require
from ..files import atomic_write_bytes
from . import ann_ondisk as od
from .ann_ondisk import CompressedIndex, CompressedParams

if TYPE_CHECKING:
    import faiss
else:
    faiss = require("faiss", "search", "cliplab's search indexes")

REBUILD_GROWTH = 2.0
REMOVED_LIMIT = 0.2
FOLD_FRACTION = 0.05
FOLD_MIN = 20_000


def open_compressed(store, kind: str) -> CompressedIndex | None:
    """The published generation of ``kind`` with what changed since, or ``None`` if there is none."""
    params = od.read_current(store.root, kind)
    if params is None or params.store_created != (store.meta("created") or ""):
        return None
    folder = od.generation_folder(store.root, kind, params.generation)
    try:
        index = od.read_merged(folder / "index")
    except RuntimeError:
        return None
    result = CompressedIndex(index, params, store.codes)
    sync_compressed(result, store, kind)
    return result


def sync_compressed(index: CompressedIndex, store, kind: str) -> None:
    """Add the items committed since the last sync and drop the removed ones (one read snapshot)."""

    def read():
        removed, seq = store.removals(kind, index.seen_seq)
        ids, vectors = store.vectors(kind, after_id=index.delta_max)
        return removed, seq, ids, vectors

    removed, seq, ids, vectors = store.snapshot(read)
    if len(removed):
        in_build = removed[removed <= index.params.built_max_id]
        if len(in_build):
            index.set_removed(np.concatenate([index.removed, in_build]))
        index.remove_delta(removed[removed > index.params.built_max_id])
    index.add_delta(ids, vectors)
    index.seen_seq = seq
    if len(ids):
        index.delta_max = int(ids.max())


# -- the writer ----------------------------------------------------------------------------------------
def refresh_compressed(store, kind: str, other_kind: str, progress: bool = False) -> CompressedParams:
    """Bring ``kind``'s compressed index up to date: nothing, a fold of the new items, or a full build."""
    params = od.read_current(store.root, kind)
    count = store.count(kind)
    if params is not None and params.store_created == (store.meta("created") or ""):
        current = open_compressed(store, kind)
        if current is not None:
            removed = len(current.removed)
            delta = len(current.delta_ids)
            drift = _drift(store, current)
            if (
                count <= REBUILD_GROWTH * params.built_count
                and removed <= REMOVED_LIMIT * params.built_count
                and drift <= od.DRIFT_LIMIT
            ):
                if delta >= max(FOLD_MIN, FOLD_FRACTION * params.built_count):
                    return _fold(store, kind, current, progress)
                return params
    return build_compressed(store, kind, other_kind, progress)


def _drift(store, current: CompressedIndex) -> float:
    """How much further from their centroids the items added since the build sit (0: as far)."""
    if len(current.delta_ids) < 1000 or not current.params.coarse_similarity or current.index is None:
        return 0.0
    similarity = od.coarse_similarity(current.index, current.delta_vectors[:20_000])
    return max(0.0, 1.0 - similarity / current.params.coarse_similarity)


def _build_folder(store, kind: str) -> od.OnDiskBuild:
    return od.OnDiskBuild(od.kind_folder(store.root, kind) / "build")


def build_compressed(
    store, kind: str, other_kind: str | None, progress: bool = False, shard_rows: int | None = None
) -> CompressedParams:
    """Train, add in shards, merge, tune and publish a new generation of ``kind``'s index. Resumes a
    build of the same snapshot that a previous run left unfinished."""
    shard_rows = shard_rows or od.SHARD_ROWS
    build = _build_folder(store, kind)
    info = build.info()
    created = store.meta("created") or ""
    if info.get("store_created") != created or "bounds" not in info or info.get("published"):
        shutil.rmtree(build.folder, ignore_errors=True)
        build = _build_folder(store, kind)
        ids = store.ids(kind)
        n = len(ids)
        bounds = [0] + [int(ids[min(end, n) - 1]) for end in range(shard_rows, n + shard_rows, shard_rows)]
        previous = od.read_current(store.root, kind)
        info = {
            "store_created": created,
            "count": n,
            "bounds": bounds,
            "built_max_id": int(ids[-1]) if n else 0,
            "removal_seq": store.removal_seq(),
            "nlist": od.choose_nlist(n),
            "m": od.choose_m(store.model.embed_dim),
            "generation": (previous.generation + 1) if previous else 1,
        }
        build.save_info(info)
    bounds = info["bounds"]

    def sample() -> np.ndarray:
        wanted = min(info["count"], 40 * info["nlist"])
        ids = store.ids(kind)
        ids = ids[ids <= info["built_max_id"]]
        picked = np.sort(np.random.default_rng(0).choice(ids, size=min(wanted, len(ids)), replace=False))
        return _vectors_of(store, kind, picked)

    build.train(sample, info["nlist"], info["m"])
    info = build.info()
    bar = tqdm(total=len(bounds) - 1, unit="shard", desc=f"compressed {kind} index", disable=not progress)

    def shard_loader(number: int):
        return lambda: store.vectors(kind, after_id=bounds[number], up_to_id=bounds[number + 1])

    shards = build.add_shards(
        ((number, shard_loader(number)) for number in range(len(bounds) - 1)),
        progress=lambda number: bar.update(1),
    )
    bar.close()
    generation = info["generation"]
    out = od.generation_folder(store.root, kind, generation)
    build.merge(shards, out)
    params = CompressedParams(
        kind,
        nlist=info["nlist"],
        m=info["m"],
        built_count=info["count"],
        built_max_id=info["built_max_id"],
        removal_seq=info["removal_seq"],
        coarse_similarity=info.get("coarse_similarity", 0.0),
        store_created=created,
        generation=generation,
    )
    _tune(store, kind, other_kind, params, out)
    od.publish(store.root, params)
    build.save_info({**build.info(), "published": True})  # its trained index stays, for folds
    shutil.rmtree(build.folder / "shards", ignore_errors=True)
    return params


def _fold(store, kind: str, current: CompressedIndex, progress: bool) -> CompressedParams:
    """A new generation: the current lists plus the items added since, merged on disk; same training."""
    build = _build_folder(store, kind)
    params = CompressedParams(**asdict(current.params))
    ids, vectors = current.delta_ids, current.delta_vectors
    shard = faiss.deserialize_index(faiss.serialize_index(build.trained()))
    od.set_ef_search(shard, od.ADD_EF_SEARCH)
    shard.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
    delta_path = build.folder / "shards" / f"delta-{params.generation + 1:06d}.index"
    delta_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(delta_path, faiss.serialize_index(shard).tobytes())
    base = od.generation_folder(store.root, kind, params.generation) / "index"
    params.generation += 1
    out = od.generation_folder(store.root, kind, params.generation)
    build.merge([base, delta_path], out)
    params.built_count += len(ids)
    params.built_max_id = max(params.built_max_id, int(ids.max()))
    od.publish(store.root, params)
    delta_path.unlink(missing_ok=True)
    return params


def _vectors_of(store, kind: str, ids: np.ndarray) -> np.ndarray:
    """Vectors of the given ids (sorted), read in id ranges."""
    parts = []
    for chunk in od.chunked(ids, 100_000):
        got_ids, vectors = store.vectors(kind, after_id=int(chunk[0]) - 1, up_to_id=int(chunk[-1]))
        parts.append(vectors[np.isin(got_ids, chunk)])
    return np.concatenate(parts) if parts else np.empty((0, store.model.embed_dim), np.float32)


def _tune(store, kind: str, other_kind: str | None, params: CompressedParams, out: Path, queries: int = 500) -> None:
    """Tune on sampled stored vectors (leave-one-out) and, when the store holds enough of the other kind,
    on those; the exact neighbours come from one chunked pass over the kind's vectors."""
    rng = np.random.default_rng(1)
    ids = store.ids(kind)
    ids = ids[ids <= params.built_max_id]
    own_ids = np.sort(rng.choice(ids, size=min(queries, len(ids)), replace=False))
    own = _vectors_of(store, kind, own_ids)
    sets_queries = [own]
    other = None
    if other_kind is not None and store.count(other_kind) >= 50:
        other_all = store.ids(other_kind)
        picked = np.sort(rng.choice(other_all, size=min(queries, len(other_all)), replace=False))
        other = _vectors_of(store, other_kind, picked)
        sets_queries.append(other)
    stacked = np.concatenate(sets_queries)

    def chunks():
        for start, end in zip([0] + list(ids[99_999::100_000]), list(ids[99_999::100_000]) + [int(ids[-1])]):
            if end > start:
                yield store.vectors(kind, after_id=int(start), up_to_id=int(end))

    _, truth, _ = od.exact_top(stacked, chunks(), od._TUNING_K + 1)
    sets = [od.TuningSet(own, truth[: len(own)], od.TARGET_RECALL, own=own_ids)]
    if other is not None:
        sets.append(od.TuningSet(other, truth[len(own) :, : od._TUNING_K], od.TARGET_RECALL_OTHER))
    index = CompressedIndex(od.read_merged(out / "index"), params, store.codes)
    params.nprobe, params.rerank, recalls = od.tune(index, sets)
    params.tuned_recall = recalls[0]
    params.tuned_recall_other = recalls[1] if len(recalls) > 1 else None
    (out / "tuning.json").write_text(json.dumps({"recalls": recalls, "queries": [len(s.queries) for s in sets]}))


def needs_compressed(store, force: bool = False) -> bool:
    """Whether the store should hold its vectors as codes and its large kinds in compressed indexes."""
    return force or store.layout == "codes" or any(store.count(k) >= od.COMPRESSED_LIMIT for k in ("image", "text"))


def shard_count(n: int, rows: int = od.SHARD_ROWS) -> int:
    return max(1, math.ceil(n / rows))
