"""Indexing on a Ray cluster: Ray Data reads, decodes and embeds the files across the cluster's
nodes and writes embedding shards (Parquet); the store then ingests the shards, one transaction per
shard. The store itself stays on the machine that runs ``cliplab index --ray``.

The image files must be readable at the same paths on every node (a shared or network filesystem),
as for any Ray Data job reading local files.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .indexer import DecodedFile, FileEntry, ImageFiles, IndexReport, commit_decoded, indexing_run, is_unchanged
from .store import Store


class _EmbedFiles:
    """A Ray Data actor: decodes and embeds batches of files with its own copy of the pipeline."""

    def __init__(self, pipeline_ref, draft: bool = True):
        import ray
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("CLIPLAB_RAY_THREADS", "1"))))
        self.pipeline = ray.get(pipeline_ref) if isinstance(pipeline_ref, ray.ObjectRef) else pipeline_ref
        self.draft = draft

    def __call__(self, batch: dict) -> dict:
        import torch
        import torch.nn.functional as F

        entries = [FileEntry(str(k), int(s), int(m)) for k, s, m in zip(batch["key"], batch["size"], batch["mtime_ns"])]
        files = ImageFiles(entries, self.pipeline.preprocess, self.draft)
        decoded = [files[i] for i in range(len(files))]
        good = [d for d in decoded if d.pixels is not None]
        dim = self.pipeline.embed_dim
        vectors = np.zeros((len(decoded), dim), dtype=np.float32)
        if good:
            with torch.inference_mode():
                features = self.pipeline.encode_image(torch.stack([d.pixels for d in good]))
            rows = [i for i, d in enumerate(decoded) if d.pixels is not None]
            vectors[rows] = F.normalize(features.float(), dim=-1).cpu().numpy()
        return {
            "key": [d.entry.key for d in decoded],
            "size": [d.entry.size for d in decoded],
            "mtime_ns": [d.entry.mtime_ns for d in decoded],
            "sha256": [d.sha256 or "" for d in decoded],
            "error": [d.error or "" for d in decoded],
            "vector": list(vectors),
        }


def embed_on_ray(pipeline, entries: Sequence[FileEntry], shard_dir: Path, batch_size: int = 64,
                 actors: int | None = None, draft: bool = True) -> list[Path]:
    """Run the Ray Data job over ``entries`` and return the Parquet shards it wrote."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    actors = actors or max(1, int(resources.get("CPU", 1)))
    dataset = ray.data.from_items([{"key": e.key, "size": e.size, "mtime_ns": e.mtime_ns} for e in entries])
    embedded = dataset.map_batches(_EmbedFiles, fn_constructor_kwargs={"pipeline_ref": ray.put(pipeline), "draft": draft},
                                   batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(
                                       size=actors), num_cpus=1)
    shard_dir.mkdir(parents=True, exist_ok=True)
    embedded.write_parquet(str(shard_dir))
    return sorted(shard_dir.glob("*.parquet"))


def ingest_shards(store: Store, shards: Sequence[Path], report: IndexReport) -> None:
    """Commit embedding shards into the store, one transaction per shard (re-ingesting is harmless)."""
    stored = store.file_states()
    for shard in shards:
        table = pq.read_table(shard).to_pydict()
        decoded, vectors = [], {}
        for key, size, mtime_ns, sha, error, vector in zip(table["key"], table["size"], table["mtime_ns"],
                                                           table["sha256"], table["error"], table["vector"]):
            decoded.append(DecodedFile(FileEntry(key, size, mtime_ns), sha or None, None, error or None))
            if not error and not is_unchanged(stored, key, sha):
                vectors[key] = np.asarray(vector, np.float32)
        commit_decoded(store, decoded, vectors, stored, report)


def index_with_ray(pipeline, store_dir: str | os.PathLike, roots: Sequence[str | os.PathLike] = (),
                   address: str = "auto", captions: str | os.PathLike | None = None, batch_size: int = 64,
                   progress: bool = True, actors: int | None = None, draft: bool = True,
                   wait: bool = False) -> IndexReport:
    """:func:`cliplab.index.index_paths` with decoding and image embedding on a Ray cluster.

    ``address``: a cluster address (``ray://head:10001`` or ``head:6379``), ``auto`` for the cluster
    this machine belongs to, or ``local`` to start a Ray instance on this machine.
    """
    import ray

    with indexing_run(pipeline, store_dir, roots, captions, batch_size, progress, wait) as (store, plan, report):
        if plan.to_embed:
            started_ray = not ray.is_initialized()
            if started_ray:
                ray.init(address=None if address == "local" else address, log_to_driver=False,
                         include_dashboard=False, logging_level="error")
            shutil.rmtree(store.root / "shards", ignore_errors=True)  # left by a killed run: re-embedded below
            shard_dir = store.root / "shards" / f"run-{int(time.time() * 1000)}"
            try:
                embed_started = time.perf_counter()
                shards = embed_on_ray(pipeline, plan.to_embed, shard_dir, batch_size, actors, draft)
                ingest_shards(store, shards, report)
                report.images_per_second = report.embedded / (time.perf_counter() - embed_started)
            finally:
                shutil.rmtree(shard_dir, ignore_errors=True)
                if started_ray:
                    ray.shutdown()
    return report
