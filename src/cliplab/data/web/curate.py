"""``cliplab data filter``: curate WebDataset shards, with a count for every rule.

The rules run in this order; a sample is counted under the first that removes it:

1. ``caption_<rule>``: the caption rules (:class:`~cliplab.data.captions.CaptionFilter`), if asked;
2. ``unreadable``: the image does not decode;
3. ``too_small`` / ``aspect_ratio``: the original image (as the download recorded it in ``KEY.json``,
   else the stored one) has a side under ``min_size`` or a longer / shorter side ratio over
   ``max_aspect_ratio``;
4. ``duplicate``: the same image bytes as an earlier sample (the original's SHA-256 from
   ``KEY.json``, else the stored bytes' SHA-256);
5. ``near_duplicate``: an image embedding at least ``near_duplicates`` cosine-similar to an earlier
   kept sample's (FAISS, exact inner product over the normalised embeddings);
6. ``clip_score``: the cosine of the image and caption embeddings under ``min_clip_score`` (LAION
   kept >= 0.28 with ViT-B/32), or outside the ``top_fraction`` best (DataComp's best CLIP-score
   baseline keeps 30%).

"Earlier" is the order of the shards as listed and of the samples inside them, so the result does
not depend on batch sizes or threads. The output is either new shards (the kept samples' members
copied unchanged, ``KEY.json`` gaining ``clip_score``) with ``curation.parquet`` (every sample, its
verdict and score), or a keep-list that training reads (``data.keep``) with the same table beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..captions import CaptionFilter
from ..keep import write_keep_list
from ..shards import _split_member_name, _tar_members, expand_shards

__all__ = ["CurateReport", "CurateSettings", "curate", "curate_summary"]

RULE_ORDER = ("unreadable", "too_small", "aspect_ratio", "duplicate", "near_duplicate", "clip_score")


@dataclass
class CurateSettings:
    min_clip_score: float | None = None
    top_fraction: float | None = None
    min_size: int = 0
    max_aspect_ratio: float = 0.0
    exact_duplicates: bool = True
    near_duplicates: float | None = None
    caption_filter: CaptionFilter | None = None
    batch_size: int = 64
    per_shard: int = 10_000

    def __post_init__(self) -> None:
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.near_duplicates is not None and not -1 <= self.near_duplicates <= 1:
            raise ValueError(f"near_duplicates is a cosine similarity in [-1, 1], got {self.near_duplicates}")
        if self.min_clip_score is not None and not -1 <= self.min_clip_score <= 1:
            raise ValueError(f"min_clip_score is a cosine similarity in [-1, 1], got {self.min_clip_score}")
        if self.per_shard < 1 or self.batch_size < 1 or self.min_size < 0 or self.max_aspect_ratio < 0:
            raise ValueError("per_shard and batch_size must be >= 1, min_size and max_aspect_ratio >= 0")

    @property
    def needs_model(self) -> bool:
        return self.min_clip_score is not None or self.top_fraction is not None or self.near_duplicates is not None

    @property
    def needs_clip_score(self) -> bool:
        return self.min_clip_score is not None or self.top_fraction is not None


@dataclass
class CurateReport:
    out: str
    shards_in: int = 0
    samples: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    clip_score_threshold: float | None = None  # the score the kept samples reach (top_fraction's cut)
    clip_score_mean: float | None = None
    shards_out: int = 0
    keep_list: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Sample:
    shard: int
    key: str
    members: list[tuple[str, int, int]]  # (name, data offset, size) of every member, in order
    image: tuple[int, int, str] | None  # (offset, size, ext)
    caption: str | None
    meta: dict[str, Any] | None
    verdict: str | None = None
    clip_score: float | None = None


def _scan(path: Path, shard: int) -> Iterator[_Sample]:
    """The samples of one shard: members grouped by key, captions and JSON metadata read."""
    from ...images import IMAGE_EXTENSIONS

    def fail(exc: BaseException) -> None:
        raise tarfile.ReadError(f"{path}: {exc}") from exc

    with open(path, "rb", buffering=0) as fh:
        current: _Sample | None = None
        for name, offset, size, head in _tar_members(fh, fail):
            key, ext = _split_member_name(name)
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = _Sample(shard, key, [], None, None, None)
            current.members.append((name, offset, size))
            if ext in IMAGE_EXTENSIONS and current.image is None:
                current.image = (offset, size, ext)
            elif ext in ("txt", "json"):
                data = head if head is not None else os.pread(fh.fileno(), size, offset)
                if ext == "txt":
                    current.caption = data.decode("utf-8", "replace").strip()
                else:
                    with contextlib.suppress(ValueError):
                        meta = json.loads(data)
                        current.meta = meta if isinstance(meta, dict) else None
        if current is not None:
            yield current


class _Reader:
    """Reads member bytes from the input shards (one open handle per shard)."""

    def __init__(self, shards: Sequence[Path]) -> None:
        self.shards = shards
        self._handles: dict[int, Any] = {}

    def read(self, shard: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.shards[shard], "rb", buffering=0)
        return os.pread(handle.fileno(), size, offset)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
            return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    except Exception:
        return None


def _embed(pipeline: Any, samples: list[_Sample], reader: _Reader, settings: CurateSettings, progress: bool) -> Any:
    """Image embeddings (and caption embeddings when scoring) of ``samples``; unreadable ones get
    the verdict ``unreadable`` and zero vectors."""
    import numpy as np

    from ...images import ImageLoadError

    images = np.zeros((len(samples), pipeline.embed_dim), np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), unit="img", desc="embedding")
    for start in range(0, len(samples), settings.batch_size):
        chunk = samples[start : start + settings.batch_size]
        data = [reader.read(s.shard, s.image[0], s.image[1]) for s in chunk]  # type: ignore[index]
        try:
            images[start : start + len(chunk)] = pipeline.embed_images(data, batch_size=len(chunk))
        except (ImageLoadError, OSError, ValueError):
            for i, (sample, blob) in enumerate(zip(chunk, data)):
                try:
                    images[start + i] = pipeline.embed_images([blob], batch_size=1)[0]
                except (ImageLoadError, OSError, ValueError):
                    sample.verdict = "unreadable"
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    texts = None
    if settings.needs_clip_score:
        texts = pipeline.embed_texts([s.caption or "" for s in samples])
    return images, texts


def _near_duplicates(vectors: Any, threshold: float) -> list[bool]:
    """``True`` for each row within ``threshold`` cosine of an earlier row that is itself kept."""
    import faiss
    import numpy as np

    n = len(vectors)
    if n < 2:
        return [False] * n
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    removed = [False] * n
    step = 4096
    for start in range(0, n, step):
        lims, _, ids = index.range_search(np.ascontiguousarray(vectors[start : start + step]), float(threshold))
        for row in range(min(step, n - start)):
            i = start + row
            neighbours = ids[lims[row] : lims[row + 1]]
            if any(j < i and not removed[j] for j in neighbours.tolist()):
                removed[i] = True
    return removed


def _write_shards(out: Path, kept: list[_Sample], reader: _Reader, per_shard: int, scores: bool, progress: bool) -> int:
    """Copy the kept samples into ``out/shard-NNNNNN.tar`` (aside, fsync, rename)."""
    shards = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(kept), unit="sample", desc="writing shards")
    for start in range(0, len(kept), per_shard):
        final = out / f"shard-{shards:06d}.tar"
        tmp = out / f".{final.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as handle:
                with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                    for sample in kept[start : start + per_shard]:
                        for name, offset, size in sample.members:
                            data = reader.read(sample.shard, offset, size)
                            if name.endswith(".json") and scores and sample.clip_score is not None:
                                meta = dict(sample.meta or {})
                                meta["clip_score"] = round(sample.clip_score, 6)
                                data = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
                            info = tarfile.TarInfo(name)
                            info.size, info.mode, info.mtime = len(data), 0o644, 0
                            tf.addfile(info, io.BytesIO(data))
                        if bar is not None:
                            bar.update(1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        shards += 1
    if bar is not None:
        bar.close()
    return shards


def curate(
    shards: str | os.PathLike,
    out: str | os.PathLike,
    settings: CurateSettings | None = None,
    *,
    pipeline: Any = None,
    keep_list: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> CurateReport:
    """Curate the samples of ``shards`` into ``out`` (see the module docstring).

    Args:
        shards: a shard folder, pattern or file (:func:`cliplab.data.expand_shards`).
        out: a folder for the new shards, or the keep-list file with ``keep_list``.
        pipeline: a :class:`cliplab.Pipeline`, needed for CLIP scores and near duplicates.
    """
    import numpy as np
    import pyarrow as pa

    from .tables import write_parquet

    settings = settings or CurateSettings()
    if settings.needs_model and pipeline is None:
        raise ValueError("CLIP scores and near duplicates need a model: pass --model (or pipeline=)")
    started = time.perf_counter()
    paths = expand_shards(shards)
    out_path = Path(os.fspath(out)).expanduser()
    resolved_inputs = {p.resolve() for p in paths}
    if keep_list:
        if out_path.exists() and not overwrite:
            raise FileExistsError(f"{out_path} exists; pass --overwrite to replace it")
        out_path.parent.mkdir(parents=True, exist_ok=True)
    else:
        if out_path.resolve() in {p.parent for p in resolved_inputs}:
            raise ValueError(f"{out_path} holds the input shards; write the curated shards to another folder")
        existing = sorted(out_path.glob("shard-*.tar")) if out_path.exists() else []
        if existing and not overwrite:
            raise FileExistsError(f"{out_path} already holds {len(existing)} shards; pass --overwrite to replace them")
        out_path.mkdir(parents=True, exist_ok=True)

    samples: list[_Sample] = []
    for index, path in enumerate(paths):
        samples.extend(s for s in _scan(path, index) if s.image is not None and s.caption is not None)
    report = CurateReport(out=str(out_path), shards_in=len(paths), samples=len(samples), keep_list=keep_list)
    removed: dict[str, int] = {}
    reader = _Reader(paths)
    try:
        rules = settings.caption_filter
        if rules is not None:
            decided = rules.apply([s.caption or "" for s in samples])
            for sample, reason in zip(samples, decided.reasons):
                if reason is not None:
                    sample.verdict = f"caption_{reason}"
            removed.update({f"caption_{r}": 0 for r in decided.counts})  # counted with the others below

        def alive() -> list[_Sample]:
            return [s for s in samples if s.verdict is None]

        if settings.min_size or settings.max_aspect_ratio:
            for sample in alive():
                meta = sample.meta or {}
                size: tuple[int, int] | None = None
                if meta.get("original_width") and meta.get("original_height"):
                    size = (int(meta["original_width"]), int(meta["original_height"]))
                else:
                    size = _image_size(reader.read(sample.shard, sample.image[0], sample.image[1]))  # type: ignore[index]
                if size is None:
                    sample.verdict = "unreadable"
                elif settings.min_size and min(size) < settings.min_size:
                    sample.verdict = "too_small"
                elif settings.max_aspect_ratio and max(size) / max(1, min(size)) > settings.max_aspect_ratio:
                    sample.verdict = "aspect_ratio"

        if settings.exact_duplicates:
            seen: set[str] = set()
            for sample in alive():
                digest = (sample.meta or {}).get("sha256")
                if not digest:
                    blob = reader.read(sample.shard, sample.image[0], sample.image[1])  # type: ignore[index]
                    digest = "stored:" + hashlib.sha256(blob).hexdigest()
                if digest in seen:
                    sample.verdict = "duplicate"
                seen.add(digest)

        if settings.needs_model:
            candidates = alive()
            images, texts = _embed(pipeline, candidates, reader, settings, progress)
            readable = [i for i, s in enumerate(candidates) if s.verdict is None]
            if settings.near_duplicates is not None:
                flags = _near_duplicates(images[readable], settings.near_duplicates)
                for i, flag in zip(readable, flags):
                    if flag:
                        candidates[i].verdict = "near_duplicate"
            if texts is not None:
                scores = np.sum(images * texts, axis=1)
                for sample, score in zip(candidates, scores.tolist()):
                    sample.clip_score = float(score) if sample.verdict != "unreadable" else None
                scored = [s for s in candidates if s.verdict is None]
                report.clip_score_mean = round(float(np.mean([s.clip_score for s in scored])), 6) if scored else None
                if settings.min_clip_score is not None:
                    for sample in scored:
                        if sample.clip_score < settings.min_clip_score:  # type: ignore[operator]
                            sample.verdict = "clip_score"
                    scored = [s for s in scored if s.verdict is None]
                if settings.top_fraction is not None and scored:
                    keep = math.ceil(settings.top_fraction * len(scored))
                    ranked = sorted(range(len(scored)), key=lambda i: (-scored[i].clip_score, i))  # type: ignore[operator]
                    for i in ranked[keep:]:
                        scored[i].verdict = "clip_score"
                    if keep:
                        report.clip_score_threshold = round(float(scored[ranked[keep - 1]].clip_score), 6)  # type: ignore[arg-type]
                elif settings.min_clip_score is not None:
                    report.clip_score_threshold = settings.min_clip_score

        for sample in samples:
            if sample.verdict is not None:
                removed[sample.verdict] = removed.get(sample.verdict, 0) + 1
        order = [k for k in removed if k.startswith("caption_")] + [r for r in RULE_ORDER]
        report.removed = {k: removed.get(k, 0) for k in order}
        kept = alive()
        report.kept = len(kept)

        table = pa.table(
            {
                "shard": pa.array([paths[s.shard].name for s in samples], pa.string()),
                "key": pa.array([s.key for s in samples], pa.string()),
                "kept": pa.array([s.verdict is None for s in samples], pa.bool_()),
                "removed_by": pa.array([s.verdict or "" for s in samples], pa.string()),
                "clip_score": pa.array([s.clip_score for s in samples], pa.float32()),
                "caption": pa.array([s.caption for s in samples], pa.string()),
            }
        )
        if keep_list:
            write_keep_list(out_path, ((paths[s.shard].name, s.key) for s in kept))
            write_parquet(out_path.with_name(out_path.name + ".curation.parquet"), table)
        else:
            for stale in out_path.glob("shard-*.tar"):
                stale.unlink()
            report.shards_out = _write_shards(
                out_path, kept, reader, settings.per_shard, settings.needs_clip_score, progress
            )
            write_parquet(out_path / "curation.parquet", table)
    finally:
        reader.close()
    report.seconds = round(time.perf_counter() - started, 3)
    if not keep_list:
        from ...files import atomic_write_text

        atomic_write_text(out_path / "curation.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def curate_summary(report: CurateReport) -> str:
    lines = [f"{'rule':<22} {'removed':>8}"]
    for rule, n in report.removed.items():
        lines.append(f"{rule:<22} {n:>8}")
    share = 100 * report.kept / report.samples if report.samples else 0.0
    lines.append(f"kept {report.kept} of {report.samples} samples ({share:.1f}%) from {report.shards_in} shards")
    if report.clip_score_threshold is not None:
        lines.append(
            f"CLIP score of the kept samples >= {report.clip_score_threshold:.4f} (mean before: {report.clip_score_mean})"
        )
    where = f"keep-list {report.out}" if report.keep_list else f"{report.shards_out} shards in {report.out}"
    lines.append(f"wrote {where} in {report.seconds:.1f} s")
    return "\n".join(lines)
