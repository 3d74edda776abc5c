"""``cliplab index``: bring a store up to date with image folders and a captions file.

Each batch of files is read, hashed and decoded to 8-bit crops, then normalised in one pass and embedded.
By default the decoding runs in threads of the main process between the model's turns, one per torch
thread (Pillow and hashlib release the GIL, so a batch decodes on every core); ``workers=N`` moves it
into N worker processes (a torch ``DataLoader``) that decode ahead while the main process embeds.
Each embedded batch is committed as one transaction: a run killed at any moment keeps every batch it
had committed, and the next run continues from there.
Files that cannot be read are recorded with the reason and skipped; the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..identity import model_identity
from ..images import ImageLoadError, load_image
from ..preprocess import Preprocessor
from .ann import refresh_indexes
from .scan import TEXT_KEY_PREFIX, FileEntry, Plan, find_images, make_plan, read_captions
from .store import NewItem, Store


@dataclass
class DecodedFile:
    """What decoding hands back for one file: its 8-bit crop (``[n, n, 3]``, before normalisation), or
    why there is none."""

    entry: FileEntry
    sha256: str | None
    pixels: np.ndarray | None
    error: str | None


class ImageFiles(Dataset):
    """Reads, hashes and preprocesses image files; never raises for a bad file.

    ``draft``: decode JPEGs at the smallest libjpeg scale (1/2, 1/4, 1/8) that still covers the
    model's input size. For 1024x768 photos and a 224-px model that halves the preprocessing time;
    ViT-B/32's embeddings stay within 1e-5 in cosine of the full decode (``benchmarks/bench_index.py``).
    """

    def __init__(self, entries: Sequence[FileEntry], preprocess: Preprocessor, draft: bool = True):
        self.entries = list(entries)
        self.preprocess = preprocess
        self.draft_size = preprocess.image_size if draft else None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> DecodedFile:
        entry = self.entries[index]
        try:
            data = Path(entry.key).read_bytes()
        except OSError as error:
            return DecodedFile(entry, None, None, f"cannot read: {error.strerror or error}")
        sha = hashlib.sha256(data).hexdigest()
        buffer = io.BytesIO(data)
        try:
            pixels = self.preprocess.crop(load_image(buffer, self.draft_size))
        except (ImageLoadError, ValueError, OSError) as error:
            reason = (
                str(error)
                .replace(repr(buffer), repr(entry.key))
                .replace(f"<{type(buffer).__name__} object>", repr(entry.key))
            )
            return DecodedFile(entry, sha, None, reason)
        except MemoryError:
            return DecodedFile(entry, sha, None, "out of memory while decoding")
        return DecodedFile(entry, sha, pixels, None)


def _keep_list(batch: list[DecodedFile]) -> list[DecodedFile]:
    return batch


def decoded_batches(files: ImageFiles, batch_size: int, threads: int) -> Iterator[list[DecodedFile]]:
    """The files in batches, each batch decoded by ``threads`` threads while the caller waits: between
    the model's turns, so decoding takes every core without competing with the model's threads."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(files), batch_size):
            yield list(pool.map(files.__getitem__, range(start, min(start + batch_size, len(files)))))


def embed_decoded(pipeline, decoded: Sequence[DecodedFile]) -> np.ndarray:
    """L2-normalised float32 embeddings ``[len(decoded), embed_dim]`` of decoded files (all with pixels)."""
    pixels = pipeline.preprocess.normalize(np.stack([d.pixels for d in decoded if d.pixels is not None]))
    with torch.inference_mode():
        features = pipeline.encode_image(pixels)
    return F.normalize(features.float(), dim=-1).cpu().numpy()


class _ReleaseLock:
    """Worker init: a decoding worker must not hold the store's write lock (see Store.release_in_child)."""

    def __init__(self, store: Store):
        self.store = store

    def __call__(self, worker_id: int) -> None:
        self.store.release_in_child()


@dataclass
class IndexReport:
    """What one run did (printed by ``cliplab index``, returned by :func:`index_paths`)."""

    store: str
    embedded: int = 0
    unchanged: int = 0
    touched: int = 0
    deleted: int = 0
    failed: list[dict] = field(default_factory=list)
    known_failures: int = 0
    texts_embedded: int = 0
    texts_unchanged: int = 0
    texts_deleted: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    total_images: int = 0
    total_texts: int = 0
    milvus: dict | None = None  # what the Milvus sync did (cliplab index --milvus)

    def to_dict(self) -> dict:
        return asdict(self)


def default_workers() -> int:
    """Decoding processes: a quarter of the cores, at most 8. None below 4 cores, where batches are decoded
    by threads between the model's turns: on 2 cores that reaches 0.83 of the model-only throughput, and
    one decoding process 0.73, as it only takes time from the model's threads (``benchmarks/bench_index.py``)."""
    return min(8, (os.cpu_count() or 2) // 4)


@contextlib.contextmanager
def indexing_run(
    pipeline,
    store_dir: str | os.PathLike,
    roots: Sequence[str | os.PathLike],
    captions: str | os.PathLike | None,
    batch_size: int,
    progress: bool,
    wait: bool = False,
    update_ann: bool = True,
    compressed: bool = False,
) -> Iterator[tuple[Store, Plan, IndexReport]]:
    """The frame of every indexing run: open (or create) the store for writing, plan the run, remove
    deleted files and embed the texts; the caller embeds ``plan.to_embed``; on exit the totals are
    counted and the search indexes refreshed."""
    started = time.perf_counter()
    identity = model_identity(pipeline)
    with Store.create(store_dir, identity, wait=wait) as store:
        store.check_model(identity)
        caption_pairs = read_captions(captions) if captions else None
        plan = make_plan(
            find_images(roots), store.file_states(), store.failure_states(), roots, caption_pairs, store.text_states()
        )
        report = IndexReport(
            store=str(store.root),
            unchanged=plan.unchanged,
            known_failures=plan.known_failures,
            texts_unchanged=plan.texts_unchanged,
        )
        if plan.deleted:
            store.put([], delete_keys=plan.deleted)
            report.deleted = sum(not key.startswith(TEXT_KEY_PREFIX) for key in plan.deleted)
            report.texts_deleted = len(plan.deleted) - report.deleted
        _embed_texts(pipeline, store, plan.texts, batch_size * 4, progress, report)
        yield store, plan, report
        report.total_images, report.total_texts = store.count("image"), store.count("text")
        if update_ann:
            refresh_indexes(store, compressed=compressed, progress=progress)
    report.seconds = time.perf_counter() - started


def index_paths(
    pipeline,
    store_dir: str | os.PathLike,
    roots: Sequence[str | os.PathLike] = (),
    captions: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    wait: bool = False,
    update_ann: bool = True,
    draft: bool = True,
    compressed: bool = False,
) -> IndexReport:
    """Embed new and changed images under ``roots`` (and the texts of ``captions``) into the store at
    ``store_dir``, creating it if needed; remove deleted files. Returns an :class:`IndexReport`.

    ``draft=False`` decodes JPEGs at full size, exactly as :meth:`Pipeline.embed_images` does.
    ``compressed=True`` moves the store to the large-store layout now (vectors as codes, compressed
    on-disk indexes), as it does by itself past ``ann_ondisk.COMPRESSED_LIMIT`` vectors of a kind."""
    with indexing_run(pipeline, store_dir, roots, captions, batch_size, progress, wait, update_ann, compressed) as (
        store,
        plan,
        report,
    ):
        _embed_files(
            pipeline,
            store,
            plan.to_embed,
            batch_size,
            default_workers() if workers is None else workers,
            progress,
            report,
            draft,
        )
    return report


def _embed_texts(
    pipeline, store: Store, texts: list[tuple[str, str]], batch_size: int, progress: bool, report: IndexReport
) -> None:
    bar = tqdm(total=len(texts), unit="text", desc="embedding texts", disable=not progress or not texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        vectors = pipeline.embed_texts([text for _, text in chunk], batch_size=batch_size)
        store.put(NewItem(key, "text", vector, caption=text) for (key, text), vector in zip(chunk, vectors))
        report.texts_embedded += len(chunk)
        bar.update(len(chunk))
    bar.close()


def _embed_files(
    pipeline,
    store: Store,
    entries: list[FileEntry],
    batch_size: int,
    workers: int,
    progress: bool,
    report: IndexReport,
    draft: bool = True,
) -> None:
    if not entries:
        return
    stored = store.file_states()
    files = ImageFiles(entries, pipeline.preprocess, draft)
    if workers:
        loader = DataLoader(
            files,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_keep_list,
            prefetch_factor=4,
            worker_init_fn=_ReleaseLock(store),
            persistent_workers=False,
            multiprocessing_context="fork",
        )
    else:
        loader = decoded_batches(files, batch_size, torch.get_num_threads())  # type: ignore[assignment]
    with tqdm(total=len(entries), unit="img", desc="indexing images", disable=not progress) as bar:
        started = time.perf_counter()
        _commit_batches(pipeline, store, loader, stored, report, bar)
    elapsed = time.perf_counter() - started
    report.images_per_second = report.embedded / elapsed if elapsed > 0 else 0.0


def _commit_batches(
    pipeline, store: Store, loader: Iterable[list[DecodedFile]], stored: dict, report: IndexReport, bar
) -> None:
    for batch in loader:
        fresh = [d for d in batch if d.pixels is not None and not is_unchanged(stored, d.entry.key, d.sha256)]
        vectors: np.ndarray | list[np.ndarray] = embed_decoded(pipeline, fresh) if fresh else []
        commit_decoded(store, batch, dict(zip((d.entry.key for d in fresh), vectors)), stored, report)
        bar.update(len(batch))


def is_unchanged(stored: dict, key: str, sha256: str | None) -> bool:
    """A file whose modification time changed but whose bytes did not keeps its vector."""
    return key in stored and stored[key][3] == sha256


def commit_decoded(
    store: Store, decoded: Sequence[DecodedFile], vectors: dict, stored: dict, report: IndexReport
) -> None:
    """One transaction for a batch: new vectors (``key -> vector``), failures with their reasons, and
    the new size/mtime of files whose bytes did not change."""
    items = [
        NewItem(
            d.entry.key,
            "image",
            vectors[d.entry.key],
            path=d.entry.key,
            size=d.entry.size,
            mtime_ns=d.entry.mtime_ns,
            sha256=d.sha256,
        )
        for d in decoded
        if d.entry.key in vectors
    ]
    failures = [(d.entry.key, d.entry.key, d.entry.size, d.entry.mtime_ns, d.error) for d in decoded if d.error]
    touches = [
        (d.entry.key, d.entry.size, d.entry.mtime_ns)
        for d in decoded
        if not d.error and d.entry.key not in vectors and is_unchanged(stored, d.entry.key, d.sha256)
    ]
    store.put(items, failures, touches=touches)
    report.embedded += len(items)
    report.touched += len(touches)
    report.failed += [{"path": key, "reason": reason} for key, _, _, _, reason in failures]
