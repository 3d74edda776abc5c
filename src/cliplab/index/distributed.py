"""Indexing on a Ray cluster: Ray Data reads, decodes and embeds the files across the cluster's
nodes (an actor pool, one model copy per actor) and streams the embeddings back, in shards of
``shard_rows`` files, to the machine that runs ``cliplab index --ray``; the store ingests each shard
in one transaction as it arrives, so a killed run keeps every shard it had ingested.

Only the image files must be readable at the same paths on every node (a shared or network
filesystem), as for any Ray Data job reading local files. The store stays on this machine and the
workers write nothing, so the store's folder need not be shared with the nodes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .indexer import (
    DecodedFile,
    FileEntry,
    ImageFiles,
    IndexReport,
    commit_decoded,
    embed_decoded,
    indexing_run,
    is_unchanged,
)
from .store import Store, StoreError


class _EmbedFiles:
    """A Ray Data actor: decodes and embeds batches of files with its own copy of the pipeline."""

    def __init__(self, pipeline_ref, draft: bool = True):
        import ray
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("CLIPLAB_RAY_THREADS", "1"))))
        self.pipeline = ray.get(pipeline_ref) if isinstance(pipeline_ref, ray.ObjectRef) else pipeline_ref
        self.draft = draft

    def __call__(self, batch: dict) -> dict:
        entries = [FileEntry(str(k), int(s), int(m)) for k, s, m in zip(batch["key"], batch["size"], batch["mtime_ns"])]
        files = ImageFiles(entries, self.pipeline.preprocess, self.draft)
        decoded = [files[i] for i in range(len(files))]
        rows = [i for i, d in enumerate(decoded) if d.pixels is not None]
        vectors = np.zeros((len(decoded), self.pipeline.embed_dim), dtype=np.float32)
        if rows:
            vectors[rows] = embed_decoded(self.pipeline, [decoded[i] for i in rows])
        return {
            "key": [d.entry.key for d in decoded],
            "size": [d.entry.size for d in decoded],
            "mtime_ns": [d.entry.mtime_ns for d in decoded],
            "sha256": [d.sha256 or "" for d in decoded],
            "error": [d.error or "" for d in decoded],
            "vector": vectors,
        }


def embed_on_ray(
    pipeline,
    entries: Sequence[FileEntry],
    batch_size: int = 64,
    actors: int | None = None,
    draft: bool = True,
    shard_rows: int = 1024,
) -> Iterator[dict[str, np.ndarray]]:
    """Run the Ray Data job over ``entries``; yield its results on this machine, ``shard_rows`` at a time
    (columns key, size, mtime_ns, sha256, error and vector, as numpy arrays)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    actors = actors or max(1, int(resources.get("CPU", 1)))
    dataset = ray.data.from_items([{"key": e.key, "size": e.size, "mtime_ns": e.mtime_ns} for e in entries])
    embedded = dataset.map_batches(
        _EmbedFiles,
        fn_constructor_kwargs={"pipeline_ref": ray.put(pipeline), "draft": draft},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
    )
    yield from embedded.iter_batches(batch_size=shard_rows, batch_format="numpy")


def ingest_shard(store: Store, shard: dict[str, np.ndarray], report: IndexReport) -> None:
    """Commit one shard of results into the store in one transaction (re-ingesting is harmless)."""
    stored = store.file_states()
    decoded, vectors = [], {}
    for key, size, mtime_ns, sha, error, vector in zip(
        shard["key"], shard["size"], shard["mtime_ns"], shard["sha256"], shard["error"], shard["vector"]
    ):
        key, sha, error = str(key), str(sha), str(error)
        decoded.append(DecodedFile(FileEntry(key, int(size), int(mtime_ns)), sha or None, None, error or None))
        if not error and not is_unchanged(stored, key, sha):
            vectors[key] = np.asarray(vector, np.float32)
    commit_decoded(store, decoded, vectors, stored, report)


class RayConnectionError(ConnectionError):
    """``cliplab index --ray`` could not join the Ray cluster."""


def _connect(ray, address: str) -> None:
    """Join the cluster at ``address`` (or start one for ``local``), with an error that says what to check."""
    try:
        ray.init(
            address=None if address == "local" else address,
            log_to_driver=False,
            include_dashboard=False,
            logging_level="error",
        )
    except (ConnectionError, RuntimeError) as error:
        auth = os.environ.get("RAY_AUTH_MODE", "disabled")
        raise RayConnectionError(
            f"cannot join the Ray cluster at {address!r} ({str(error).splitlines()[0]}). Check that the head node "
            f"is running (`ray status`) and reachable from here. Ray 2.59 and later start clusters with token "
            f"authentication: then set RAY_AUTH_MODE=token here (it is {auth!r}) and give this machine the "
            f"cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
        ) from None


def index_with_ray(
    pipeline,
    store_dir: str | os.PathLike,
    roots: Sequence[str | os.PathLike] = (),
    address: str = "auto",
    captions: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = True,
    actors: int | None = None,
    draft: bool = True,
    wait: bool = False,
    compressed: bool = False,
) -> IndexReport:
    """:func:`cliplab.index.index_paths` with decoding and image embedding on a Ray cluster.

    ``address``: a cluster address (``ray://head:10001`` or ``head:6379``), ``auto`` for the cluster
    this machine belongs to, or ``local`` to start a Ray instance on this machine.
    """
    import ray

    with indexing_run(pipeline, store_dir, roots, captions, batch_size, progress, wait, compressed=compressed) as (
        store,
        plan,
        report,
    ):
        if plan.to_embed:
            started_ray = not ray.is_initialized()
            if started_ray:
                _connect(ray, address)
            bar = tqdm(total=len(plan.to_embed), unit="img", desc="indexing images on Ray", disable=not progress)
            received = 0
            try:
                embed_started = time.perf_counter()
                for shard in embed_on_ray(pipeline, plan.to_embed, batch_size, actors, draft):
                    ingest_shard(store, shard, report)
                    received += len(shard["key"])
                    bar.update(len(shard["key"]))
                report.images_per_second = report.embedded / (time.perf_counter() - embed_started)
            finally:
                bar.close()
                if started_ray:
                    ray.shutdown()
            if received != len(plan.to_embed):
                raise StoreError(
                    f"the Ray job returned {received} of {len(plan.to_embed)} files; the store keeps "
                    "what arrived. Run the same `cliplab index --ray` again to finish."
                )
    return report
