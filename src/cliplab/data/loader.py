"""Training loader: map-style and streaming datasets, and the deterministic loader.

:class:`PairDataset` serves pairs from tables and folders
(:mod:`cliplab.data.pairs`); :class:`ShardStream` streams WebDataset tar shards
(:mod:`cliplab.data.shards`); :func:`make_train_loader` builds the training
loader of one rank from a :class:`DataSpec`.

Determinism and resumption
--------------------------
:func:`make_train_loader` returns an infinite loader whose batch sequence is a pure
function of ``(spec, seed, batch_size, rank, world_size)`` and of the data itself; it
does **not** depend on the number of worker processes.  ``start_batch=k`` yields exactly
batches ``k, k+1, ...`` of the uninterrupted run, without decoding anything before
batch ``k``:

* Every rank sees one logical *sample stream*; batch ``k`` is positions
  ``[k*B, (k+1)*B)`` of it.
* Map-style sources: epoch ``e`` is a permutation of all pairs seeded by
  ``(seed, e)``; global position ``g`` holds ``perm_{g // N}[g % N]`` and rank ``r``
  owns the positions ``g = q * world_size + r``.  The loader's sampler just counts
  batch numbers from ``start_batch``; each worker computes its batch's indices
  arithmetically, so skipping costs nothing.
* Shards: epoch ``e`` shuffles the shard list with ``(seed, e)`` and gives rank ``r``
  the shards ``perm[r::world_size]``; the rank's samples pass through a shuffle buffer
  seeded by ``(seed, e, rank)``.  The stream is built from lightweight references
  (shard, member offset, size, caption) obtained by reading tar *headers* and the
  small ``.txt`` members only, so skipping ``n`` samples costs a header scan and
  ``n`` random numbers, never an image read or decode.  Once a shard's sample count is
  known, whole epochs before the resume point are skipped arithmetically.
  Each worker walks the same reference stream and reads and decodes only the blocks
  (batches) it owns: block ``j`` belongs to worker ``(j - start_batch) % workers``,
  which is the order in which ``torch.utils.data.DataLoader`` collects batches from
  its workers, so the batches do not depend on the number of workers.
* Shards are read with a small tar reader of our own (plain ustar headers parsed
  directly, anything else handed to :mod:`tarfile`) rather than the ``webdataset``
  package: exact, cheap resumption needs member offsets and header-only skipping,
  whereas a webdataset pipeline streams every byte through its stages, so skipping
  ``n`` samples would mean reading them (and its shuffle is not reproducible per
  position).
* A sample whose image cannot be read or decoded is skipped and counted
  (:attr:`PairDataset.skipped`, :attr:`ShardStream.skipped`, :attr:`TrainLoader.skipped`);
  its slot in the batch is filled with the next readable sample *after* the batch in
  the stream.  The replacement depends only on the stream, so a resumed run makes the
  same choice, and batches keep their full size (which distributed training needs).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import os
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..images import ImageLoadError, ImageTooLargeError, load_image
from .augment import AugmentConfig, Augmenter
from .captions import CAPTION_RULES, caption_rule, filter_captions
from .keep import KeepList, read_keep_list
from .pairs import Pair, read_pairs, source_kind
from .shards import _tar_groups, expand_shards

__all__ = [
    "SKIP_REASONS",
    "DataSpec",
    "PairDataset",
    "ShardStream",
    "TrainLoader",
    "make_train_loader",
]

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, torch.Tensor]

#: Every reason a sample can be skipped for, as reported by the ``skipped`` counters.
SKIP_REASONS: tuple[str, ...] = (
    "missing",  # image file not found / not readable (permissions, directory)
    "read_error",  # I/O error or short read while reading the encoded bytes
    "decode_error",  # not a decodable image (ImageLoadError)
    "too_large",  # over Pillow's decompression-bomb limit (ImageTooLargeError)
    "preprocess_error",  # the preprocess callable raised
    "tokenize_error",  # the tokenizer raised
    "incomplete",  # shard sample without an image or without a .txt caption
    "shard_error",  # unreadable or truncated tar shard (the rest of the shard is skipped)
    "not_kept",  # shard sample left out by the keep-list (data.keep)
    *(f"caption_{rule}" for rule in CAPTION_RULES),  # shard captions removed by the filter
)

# Seed-stream tags, so that the different random streams never coincide.
_TAG_PERMUTATION = 1
_TAG_MAP_RESAMPLE = 2
_TAG_SHARD_ORDER = 3
_TAG_SHARD_RESAMPLE = 4
_TAG_SHUFFLE_BUFFER = 5
_RESAMPLE_CHUNK = 4096  # positions per counter-based random block (map-style resampling)
_MAX_EMPTY_EPOCHS = 16  # consecutive epochs without a sample before a stream gives up


# =========================================================================== shared helpers


def _entropy(*keys: int) -> list[int]:
    return [int(k) % (1 << 64) for k in keys]


def _np_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_entropy(*keys)))


def _py_rng(*keys: int) -> random.Random:
    # random.Random(int) and .random() are guaranteed stable across Python versions.
    state = np.random.SeedSequence(_entropy(*keys)).generate_state(2, np.uint64)
    return random.Random((int(state[0]) << 64) | int(state[1]))


class _SkipCounts:
    """Skip counters shared by the main process and the DataLoader workers.

    A ``[rows, reasons]`` int64 tensor in shared memory; each worker writes only its own
    row (worker id + 1; row 0 is the main process), so there are no write races.
    """

    def __init__(self, rows: int = 65) -> None:
        self._index = {r: i for i, r in enumerate(SKIP_REASONS)}
        table = torch.zeros(rows, len(SKIP_REASONS), dtype=torch.int64)
        try:
            table.share_memory_()
        except (RuntimeError, OSError):  # no shared memory: counts from workers stay in the workers
            logger.warning("shared memory unavailable: skip counts of worker processes are not collected")
        self._table = table

    def add(self, reason: str, n: int = 1) -> None:
        info = get_worker_info()
        row = 0 if info is None else (info.id + 1) % self._table.shape[0]
        self._table[row, self._index[reason]] += n

    def as_dict(self) -> dict[str, int]:
        totals = self._table.sum(0).tolist()
        return {r: int(c) for r, c in zip(SKIP_REASONS, totals) if c}

    def reset(self) -> None:
        self._table.zero_()


def _load_sample(
    source: Path | bytes,
    caption: str,
    preprocess: Callable[[Any], torch.Tensor],
    tokenizer: Callable[..., torch.Tensor],
    augment: Augmenter | None = None,
    position: int = 0,
) -> Sample | str:
    """Decode, (augment,) preprocess and tokenise one pair; on failure return the skip reason."""
    try:
        image = load_image(source)
        if augment is not None:
            image = augment(image, caption, position)
    except ImageTooLargeError:
        return "too_large"
    except ImageLoadError:
        return "decode_error"
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        return "missing"
    except OSError:
        return "read_error"
    try:
        pixels = preprocess(image)
    except Exception:
        logger.debug("preprocess failed", exc_info=True)
        return "preprocess_error"
    try:
        tokens = tokenizer(caption)
    except Exception:
        logger.debug("tokenizer failed", exc_info=True)
        return "tokenize_error"
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    return pixels, tokens


def _collate(samples: Sequence[Sample]) -> Sample:
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _max_replacement_tries(batch_size: int) -> int:
    return max(1000, 10 * batch_size)


_END = object()  # what a block's ``load`` returns past the end of a finite stream


def _fill_block(load: Callable[[int, bool], Any], start: int, size: int) -> tuple[list[Sample], bool]:
    """The samples of the stream positions ``[start, start + size)``, each unreadable one replaced by the
    next readable sample *after* the block (positions ``start + size``, ...), so a block keeps its size.

    ``load(position, count)`` returns a sample, ``None`` for an unreadable one (counted if ``count``:
    replacements are not), or ``_END`` past the end of the stream. Returns ``(samples, ended)``.
    """
    samples: list[Sample] = []
    failed, ended = 0, False
    for position in range(start, start + size):
        sample = load(position, True)
        if sample is _END:
            ended = True
            break
        if sample is None:
            failed += 1
        else:
            samples.append(sample)
    position, tries = start + size, 0
    while failed:
        tries += 1
        if tries > _max_replacement_tries(size):
            raise RuntimeError(f"more than {tries - 1} unreadable images in a row: check the data")
        sample = load(position, False)
        position += 1
        if sample is _END:
            break
        if sample is not None:
            samples.append(sample)
            failed -= 1
    return samples, ended


# =========================================================================== map-style


class PairDataset(Dataset):
    """Map-style dataset over pairs: ``dataset[i] -> (pixels [3, H, W], tokens [context])``.

    Decoding, ``preprocess`` (e.g. :class:`cliplab.preprocess.Preprocessor`, called with a
    PIL image) and ``tokenizer`` (e.g. :class:`cliplab.tokenizer.Tokenizer`, called with
    one string) run wherever the item is fetched, i.e. in the DataLoader workers.

    An unreadable image is counted in :attr:`skipped` under its reason and replaced by
    the next readable pair (``i + 1``, ``i + 2``, ... cyclically), so indexing never
    raises for bad data.  :meth:`load` returns ``None`` instead.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        augment: Augmenter | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.augment = augment
        self._skips = _SkipCounts()

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, count: bool = True, position: int | None = None) -> Sample | None:
        """The sample at ``index``, or ``None`` if its image is unusable (counted if ``count``).
        ``position`` (the stream position) keys the augmentation; default: ``index``."""
        pair = self.pairs[index]
        where = index if position is None else position
        result = _load_sample(pair.image, pair.caption, self.preprocess, self.tokenizer, self.augment, where)
        if isinstance(result, str):
            if count:
                self._skips.add(result)
            logger.debug("skipping %s: %s", pair.image, result)
            return None
        return result

    def __getitem__(self, index: int) -> Sample:
        n = len(self.pairs)
        if n == 0:
            raise IndexError("PairDataset is empty")
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} pairs")
        index %= n
        for step in range(min(n, _max_replacement_tries(1))):
            sample = self.load((index + step) % n, count=step == 0)
            if sample is not None:
                return sample
        raise RuntimeError(f"no readable image found near index {index}: check the data")

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped samples per reason (from all processes that used this dataset)."""
        return self._skips.as_dict()


class _MapOrder:
    """Position -> pair index for one rank: a pure function of (seed, rank, world_size)."""

    def __init__(
        self, sizes: Sequence[int], weights: Sequence[float], seed: int, rank: int, world_size: int, resample: bool
    ) -> None:
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.total = int(sum(self.sizes))
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed, self.rank, self.world_size, self.resample = seed, rank, world_size, resample
        self._cache: OrderedDict[int, Any] = OrderedDict()

    def _cached(self, key: int, make: Callable[[], Any]) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = make()
            self._cache[key] = value
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return value

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = _np_rng(self.seed, _TAG_PERMUTATION, epoch).permutation(self.total)
        return perm.astype(np.int32) if self.total < 2**31 else perm

    def _resample_block(self, block: int) -> np.ndarray:
        rng = _np_rng(self.seed, _TAG_MAP_RESAMPLE, block)
        src = rng.choice(len(self.sizes), size=_RESAMPLE_CHUNK, p=self.probs)
        u = rng.random(_RESAMPLE_CHUNK)
        sizes = np.asarray(self.sizes, dtype=np.int64)
        within = np.minimum((u * sizes[src]).astype(np.int64), sizes[src] - 1)
        return self.offsets[src] + within

    def global_position(self, q: int) -> int:
        return q * self.world_size + self.rank

    def epoch_of(self, q: int) -> int:
        return self.global_position(q) // self.total

    def index_at(self, q: int) -> int:
        g = self.global_position(q)
        if self.resample:
            block, off = divmod(g, _RESAMPLE_CHUNK)
            return int(self._cached(block, lambda: self._resample_block(block))[off])
        epoch, off = divmod(g, self.total)
        return int(self._cached(epoch, lambda: self._permutation(epoch))[off])


class _PairBatches(Dataset):
    """``batches[k]`` is batch ``k`` of a rank's stream (the DataLoader sampler counts ``k``)."""

    def __init__(self, dataset: PairDataset, order: _MapOrder, batch_size: int) -> None:
        self.dataset = dataset
        self.order = order
        self.batch_size = batch_size

    def __getitem__(self, k: int) -> Sample:
        samples, _ = _fill_block(
            lambda q, count: self.dataset.load(self.order.index_at(q), count=count, position=q),
            k * self.batch_size,
            self.batch_size,
        )
        return _collate(samples)


class _CountFrom:
    """Infinite sampler ``start, start + 1, ...``."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


# =========================================================================== shard stream


class _Ref(NamedTuple):
    """A sample in a shard, located but not read: image member offset/size and the caption."""

    shard: int
    key: str
    offset: int
    size: int
    caption: str


def _shuffled(items: Iterable[Any], size: int, rnd: random.Random) -> Iterator[Any]:
    """Seeded shuffle buffer: fill ``size`` items, then emit a random one per item read."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rnd.random() * size)
        out, buf[j] = buf[j], item
        yield out
    while buf:
        j = int(rnd.random() * len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class _Cursor:
    """Random access to the near future of an iterator, by absolute position."""

    def __init__(self, it: Iterator[Any], position: int) -> None:
        self._it = it
        self._base = position
        self._buf: deque[Any] = deque()
        self._done = False

    def _pull(self) -> bool:
        if self._done:
            return False
        try:
            self._buf.append(next(self._it))
        except StopIteration:
            self._done = True
            return False
        return True

    def get(self, position: int) -> Any | None:
        i = position - self._base
        while len(self._buf) <= i:
            if not self._pull():
                return None
        return self._buf[i]

    def advance_to(self, position: int) -> None:
        while self._base < position:
            if self._buf:
                self._buf.popleft()
            elif self._done:
                self._base = position
                return
            else:
                try:
                    next(self._it)
                except StopIteration:
                    self._done = True
            self._base += 1


def _normalise_sources(sources: Any) -> list[tuple[str, float]]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[tuple[str, float]] = []
    for item in sources:
        if isinstance(item, (str, os.PathLike)):
            path, weight = os.fspath(item), 1.0
        else:
            path, weight = item
            path, weight = os.fspath(path), float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"source weight must be positive, got {weight} for {path!r}")
        out.append((path, weight))
    if not out:
        raise ValueError("no data sources given")
    return out


class ShardStream(IterableDataset):
    """Streaming dataset over WebDataset tar shards yielding ``(pixels, tokens)``.

    Args:
        sources: a shard pattern, a list of patterns, or ``[(pattern, weight), ...]``
            (see :func:`expand_shards`).  Weights only matter with ``resample``;
            without it every sample of every source is seen once per epoch.
        preprocess: image callable (PIL image -> ``[3, H, W]`` tensor).
        tokenizer: text callable (str -> ``[context]`` or ``[1, context]`` LongTensor).
        rank: this process's rank (with ``world_size``: its share).  Without ``resample``, epoch ``e``
            shuffles the shards with ``(seed, e)`` and rank ``r`` reads
            ``shards[r::world_size]``, so every sample goes to exactly one rank per
            epoch (``world_size`` must not exceed the number of shards).  With
            ``resample`` each rank draws ``ceil(num_shards / world_size)`` shards per
            epoch, with replacement: a source with probability proportional to its
            weight, then a shard of it uniformly.
        seed: seed of every random choice (shard order, shuffle buffer, resampling).
        shuffle_buffer: size of the sample shuffle buffer (``<= 1``: no shuffling);
            the buffer is emptied at the end of each epoch.
        resample: draw shards with replacement (the stream is infinite).
        caption_filter: drop samples whose caption :func:`caption_rule` rejects
            (counted as ``caption_<rule>``).
        batch_size: block size of the worker split: block ``j`` (stream positions
            ``[j*B, (j+1)*B)``) is read by worker ``(j - start_batch) % num_workers``,
            so a DataLoader with the same ``batch_size`` yields the stream's blocks in
            order whatever the number of workers.  Every sample goes to exactly one
            worker.
        start_batch: begin at block ``start_batch`` (earlier samples are skipped at the
            tar-member level, without reading or decoding images).
        epochs: stop after this many epochs (``None``: infinite).
        keep: a :class:`~cliplab.data.keep.KeepList` (or its path): only its samples are used (the
            others are counted as ``not_kept``).

    Unreadable samples are counted in :attr:`skipped` and replaced by the next readable
    sample after their block.  Only uncompressed, seekable ``.tar`` files are supported.
    """

    def __init__(
        self,
        sources: Any,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resample: bool = False,
        caption_filter: bool = True,
        batch_size: int = 1,
        start_batch: int = 0,
        epochs: int | None = None,
        keep: KeepList | str | os.PathLike | None = None,
        augment: Augmenter | None = None,
    ) -> None:
        super().__init__()
        self.augment = augment
        self.keep = read_keep_list(keep) if isinstance(keep, (str, os.PathLike)) else keep
        self.sources = _normalise_sources(sources)
        self._shards: list[Path] = []
        self._source_ranges: list[tuple[int, int]] = []
        for pattern, _ in self.sources:
            found = expand_shards(pattern)
            self._source_ranges.append((len(self._shards), len(found)))
            self._shards.extend(found)
        weights = np.array([w for _, w in self.sources], dtype=np.float64)
        self._probs = weights / weights.sum()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if not resample and len(self._shards) < world_size:
            raise ValueError(
                f"{len(self._shards)} shards cannot be split over {world_size} ranks; "
                "repack with fewer samples per shard or use resample=True"
            )
        if batch_size < 1 or start_batch < 0:
            raise ValueError("batch_size must be >= 1 and start_batch >= 0")
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.resample = bool(resample)
        self.caption_filter = bool(caption_filter)
        self.batch_size = int(batch_size)
        self.start_batch = int(start_batch)
        self.epochs = epochs
        self._skips = _SkipCounts()
        self._counts: dict[int, int] = {}  # shard index -> usable samples (filled by scans)
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._handles_pid = -1

    @property
    def shards(self) -> list[Path]:
        """All shard files, sources concatenated in order."""
        return list(self._shards)

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped samples per reason (from all processes that used this dataset)."""
        return self._skips.as_dict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["_handles_pid"] = -1
        return state

    # ------------------------------------------------------------------ stream of references

    def _epoch_order(self, epoch: int) -> list[int]:
        n = len(self._shards)
        if not self.resample:
            perm = _np_rng(self.seed, _TAG_SHARD_ORDER, epoch).permutation(n)
            return perm[self.rank :: self.world_size].tolist()
        rng = _np_rng(self.seed, _TAG_SHARD_RESAMPLE, epoch, self.rank)
        draws = max(1, math.ceil(n / self.world_size))
        src = rng.choice(len(self.sources), size=draws, p=self._probs)
        u = rng.random(draws)
        order = []
        for s, x in zip(src.tolist(), u.tolist()):
            start, count = self._source_ranges[s]
            order.append(start + min(int(x * count), count - 1))
        return order

    def _scan(self, shard: int, counting: list[bool]) -> Iterator[_Ref]:
        """References of the usable samples of one shard, reading headers and captions only."""
        path = self._shards[shard]
        usable = 0
        keep = self.keep
        shard_name = path.name

        def skip(reason: str) -> None:
            if counting[0]:
                self._skips.add(reason)

        def damaged(exc: BaseException) -> None:
            logger.warning("shard %s is unreadable or damaged, skipping (the rest of) it: %s", path, exc)
            skip("shard_error")

        try:
            fh = open(path, "rb", buffering=0)  # unbuffered: only headers are read, by seeking
        except OSError as exc:
            logger.warning("cannot open shard %s: %s", path, exc)
            skip("shard_error")
            self._counts[shard] = 0
            return
        with fh:
            for key, image, caption in _tar_groups(fh, damaged):
                if image is None or caption is None:
                    skip("incomplete")
                    continue
                if keep is not None and (shard_name, key) not in keep:
                    skip("not_kept")
                    continue
                rule = caption_rule(caption) if self.caption_filter else None
                if rule is not None:
                    skip(f"caption_{rule}")
                    continue
                usable += 1
                yield _Ref(shard, key, image[0], image[1], caption)
        self._counts[shard] = usable

    def _rank_refs(self, skip_to: int, counting: list[bool]) -> Iterator[_Ref]:
        """The rank's reference stream from position ``skip_to`` on (epochs concatenated)."""
        position = 0
        epoch = 0
        empty = 0
        while self.epochs is None or epoch < self.epochs:
            order = self._epoch_order(epoch)
            known = [self._counts.get(s) for s in order]
            size: int | None = None
            if None not in known:
                size = sum(known)  # type: ignore[arg-type]
                if position + size <= skip_to:  # skip a whole epoch arithmetically
                    position += size
                    epoch += 1
                    empty = empty + 1 if size == 0 else 0
                    if empty >= _MAX_EMPTY_EPOCHS:
                        break
                    continue
            rnd = _py_rng(self.seed, _TAG_SHUFFLE_BUFFER, epoch, self.rank)
            refs = itertools.chain.from_iterable(self._scan(s, counting) for s in order)
            n = 0
            for ref in _shuffled(refs, self.shuffle_buffer, rnd):
                n += 1
                if position >= skip_to:
                    counting[0] = counting[1]
                    yield ref
                position += 1
            empty = empty + 1 if n == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                break
            epoch += 1
        if empty >= _MAX_EMPTY_EPOCHS:
            raise RuntimeError(
                f"rank {self.rank}: {_MAX_EMPTY_EPOCHS} epochs in a row without a usable sample in "
                f"{len(self._shards)} shards (skipped: {self.skipped})"
            )

    # ------------------------------------------------------------------ reading samples

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._handles_pid != os.getpid():  # never share file offsets with a forked parent
            self._handles = OrderedDict()
            self._handles_pid = os.getpid()
        fh = self._handles.get(shard)
        if fh is None:
            fh = open(self._shards[shard], "rb", buffering=0)
            self._handles[shard] = fh
            while len(self._handles) > 8:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(shard)
        fh.seek(offset)
        return fh.read(size)

    def _load_ref(self, ref: _Ref, count: bool, position: int = 0) -> Sample | None:
        try:
            data = self._read(ref.shard, ref.offset, ref.size)
        except OSError:
            result: Sample | str = "read_error"
        else:
            if len(data) != ref.size:
                result = "read_error"
            else:
                result = _load_sample(data, ref.caption, self.preprocess, self.tokenizer, self.augment, position)
        if isinstance(result, str):
            if count:
                self._skips.add(result)
            logger.debug("skipping %s in %s: %s", ref.key, self._shards[ref.shard], result)
            return None
        return result

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        B = self.batch_size
        block = self.start_batch + worker
        # counting[1]: whether this worker counts scan-level skips (worker 0 does: every
        # worker scans the same stream); counting[0] switches on at the resume point.
        counting = [worker == 0 and block == 0, worker == 0]
        cursor = _Cursor(self._rank_refs(block * B, counting), block * B)

        def load(position: int, count: bool) -> Any:
            ref = cursor.get(position)
            return _END if ref is None else self._load_ref(ref, count=count, position=position)

        while True:
            cursor.advance_to(block * B)
            samples, ended = _fill_block(load, block * B, B)
            yield from samples
            if ended:
                return
            block += workers


# =========================================================================== train loader


@dataclass
class DataSpec:
    """What to train on.

    Attributes:
        sources: ``[(path or shard pattern, weight), ...]``; plain strings get weight 1.
            All sources must be of one kind: tables/folders, or shards.  Weights are
            used with ``resample`` (sources drawn in proportion to them); without it each
            epoch covers every sample of every source once.
        caption_filter: drop pairs whose caption :func:`caption_rule` rejects.
        shuffle_buffer: shard sample shuffle buffer (tables/folders are fully permuted).
        resample: draw with replacement (map-style: samples; shards: shards).
        keep: a keep-list file (``cliplab data filter ... --keep-list``): train only on its samples
            (shards only).
    """

    sources: list[tuple[str, float]]
    caption_filter: bool = True
    shuffle_buffer: int = 1000
    resample: bool = False
    keep: str = ""

    def __post_init__(self) -> None:
        self.sources = _normalise_sources(self.sources)


class TrainLoader:
    """Infinite iterable of ``(pixels [B, 3, H, W], tokens [B, context])`` batches.

    Each ``iter()`` starts again at ``start_batch``.  Attributes: ``dataloader`` (the
    underlying :class:`torch.utils.data.DataLoader`), ``dataset`` (a
    :class:`PairDataset` or :class:`ShardStream`), ``kind`` (``"pairs"`` or
    ``"shards"``), ``filter_counts`` (pairs removed per caption rule, map-style only),
    ``num_samples`` (pairs per epoch over all ranks, map-style only).
    """

    def __init__(
        self,
        dataloader: DataLoader,
        dataset: PairDataset | ShardStream,
        kind: str,
        batch_size: int,
        start_batch: int,
        filter_counts: dict[str, int] | None = None,
        num_samples: int | None = None,
        order: _MapOrder | None = None,
    ) -> None:
        self.dataloader = dataloader
        self.dataset = dataset
        self.kind = kind
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.filter_counts = filter_counts or {}
        self.num_samples = num_samples
        self._order = order

    def __iter__(self) -> Iterator[Sample]:
        yield from self.dataloader

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far, per reason (includes batches prefetched by workers)."""
        return self.dataset.skipped

    def epoch_of_batch(self, batch: int) -> int | None:
        """Epoch of the first sample of ``batch`` (map-style without resampling; else ``None``)."""
        if self._order is None or self._order.resample:
            return None
        return self._order.epoch_of(batch * self.batch_size)


def make_train_loader(
    spec: DataSpec,
    preprocess: Callable[[Any], torch.Tensor],
    tokenizer: Callable[..., torch.Tensor],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    workers: int = 2,
    start_batch: int = 0,
    augment: AugmentConfig | None = None,
) -> TrainLoader:
    """Build the infinite, deterministic, resumable training loader of one rank.

    The batch sequence is a pure function of ``(spec, seed, batch_size, rank,
    world_size)`` and the data; it does not depend on ``workers``.  ``start_batch=k``
    yields exactly the batches ``k, k+1, ...`` of an uninterrupted run without decoding
    anything before them.  See the module docstring for the ordering rules.

    Args:
        spec: the sources and options.
        preprocess: image callable, e.g. ``Preprocessor(image_size=224)``.
        tokenizer: text callable, e.g. ``Tokenizer()``.
        batch_size: samples per batch on this rank.
        rank: distributed position (with ``world_size``); every sample goes to exactly one rank
            per epoch (without resampling).
        seed: seed of the whole order.
        workers: DataLoader worker processes (0: load in the calling process).
        start_batch: first batch to yield (the number of batches already consumed).
        augment: augment each image on the fly (:mod:`cliplab.data.augment`), keyed by its stream
            position, so the batches stay a pure function of the arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    if start_batch < 0 or workers < 0:
        raise ValueError("start_batch and workers must be >= 0")
    kinds = {source_kind(path) for path, _ in spec.sources}
    if len(kinds) != 1:
        raise ValueError("all sources of a DataSpec must be shards, or all tables/folders; got a mix")
    kind = kinds.pop()
    if spec.keep and kind != "shards":
        raise ValueError(f"a keep-list ({spec.keep}) applies to shards; the sources are tables or folders")
    options: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,  # re-iterating does not respawn workers
        # Worker seeds come from a generator of the loader's own, so creating the loader never
        # consumes the global RNG that a resumed training run has just restored.
        "generator": torch.Generator().manual_seed(seed),
    }
    if "in_order" in inspect.signature(DataLoader.__init__).parameters:  # torch >= 2.6
        options["in_order"] = True  # round-robin over workers: the order the datasets rely on
    if workers > 0:
        options["prefetch_factor"] = 2

    augmenter = None if augment is None else Augmenter(augment, seed, rank)
    if kind == "shards":
        stream = ShardStream(
            spec.sources,
            preprocess,
            tokenizer,
            rank=rank,
            world_size=world_size,
            seed=seed,
            shuffle_buffer=spec.shuffle_buffer,
            resample=spec.resample,
            caption_filter=spec.caption_filter,
            batch_size=batch_size,
            start_batch=start_batch,
            keep=spec.keep or None,
            augment=augmenter,
        )
        loader = DataLoader(stream, batch_size=batch_size, collate_fn=_collate, **options)
        return TrainLoader(loader, stream, kind, batch_size, start_batch)

    pairs: list[Pair] = []
    sizes: list[int] = []
    counts = dict.fromkeys(CAPTION_RULES, 0)
    for path, _ in spec.sources:
        source_pairs = read_pairs(path)
        if spec.caption_filter:
            source_pairs, removed = filter_captions(source_pairs)
            for rule, n in removed.items():
                counts[rule] += n
        if not source_pairs:
            raise ValueError(f"data source {path!r} has no usable pairs")
        pairs.extend(source_pairs)
        sizes.append(len(source_pairs))
    if any(counts.values()):
        logger.info("caption filter removed %s", {k: v for k, v in counts.items() if v})
    dataset = PairDataset(pairs, preprocess, tokenizer, augmenter)
    order = _MapOrder(sizes, [w for _, w in spec.sources], seed, rank, world_size, spec.resample)
    batches = _PairBatches(dataset, order, batch_size)
    loader = DataLoader(batches, batch_size=None, sampler=_CountFrom(start_batch), collate_fn=_passthrough, **options)
    return TrainLoader(loader, dataset, kind, batch_size, start_batch, counts, len(pairs), order)


def _passthrough(batch: Any) -> Any:
    return batch
