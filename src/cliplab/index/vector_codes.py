"""The vectors of a large store: one fixed-width code per item in a file addressed by item id.

At a hundred million items, float32 vectors in SQLite (2 KB each for 512-d) would outgrow any disk
budget. A store past :data:`cliplab.index.ann_ondisk.COMPRESSED_LIMIT` items keeps its vectors as
codes of a trained FAISS codec instead (by default ``SQ8``: a byte a dimension, 512 bytes for 512-d,
cosine to the original above 0.999; ``SQ6`` and ``SQ4``: 384 and 256 bytes, coarser re-ranking), in
``vectors/codes.u8``: row ``id`` of the file is the code of item ``id``, so no id map is needed. The same codes re-rank the compressed index's candidates and
rebuild it when the data drifts.

Crash safety: a code is written (``pwrite`` + ``fsync``) inside the SQLite transaction that inserts its
item, before the commit. A kill before the commit leaves a code for an id no committed item has, which
the next insert with that id overwrites; a kill after it leaves both. Rows of removed items stay as
holes until the store is compacted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..extras import require
from ..files import atomic_write_bytes

if TYPE_CHECKING:
    import faiss
else:
    faiss = require("faiss", "search", "cliplab's search indexes")

FOLDER = "vectors"
CODEC_FILE = "codec.faiss"
CODES_FILE = "codes.u8"
DEFAULT_CODEC = "SQ8"
CODECS = ("SQ4", "SQ6", "SQ8")
# 4-bit ranges clipped at mean ± 2.5 sd: on clustered 512-d data the inner-product error is 0.0038
# against 0.0054 with the min-max range (re-ranking recall@10 0.90 against 0.85).
_SQ_RANGES = {"SQ4": 2.5}
# 6 and 8 bits: the min-max range of the sample widened by 2 % on each side, so that vectors that drift
# a little past the sample are not clipped (a wider margin costs re-ranking precision on dense data).
_SQ_MARGIN = {"SQ6": 0.02, "SQ8": 0.02}


class VectorCodes:
    """The codec and the codes file of a store folder (``STORE/vectors/``)."""

    def __init__(self, store_root: str | os.PathLike, folder: str = FOLDER):
        self.folder = Path(store_root) / folder
        self.codec: Any = faiss.read_index(str(self.folder / CODEC_FILE))
        self.dim = self.codec.d
        self.width = self.codec.sa_code_size()
        self.path = self.folder / CODES_FILE
        self.path.touch(exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR)
        self._map: np.ndarray | None = None

    @staticmethod
    def exists(store_root: str | os.PathLike, folder: str = FOLDER) -> bool:
        return (Path(store_root) / folder / CODEC_FILE).is_file()

    @classmethod
    def train(
        cls, store_root: str | os.PathLike, sample: np.ndarray, codec_name: str | None = None, folder: str = FOLDER
    ) -> VectorCodes:
        """Train a codec (one of :data:`CODECS`, or any FAISS factory string) on ``sample`` and save it
        (atomically) for the store at ``store_root``."""
        sample = np.ascontiguousarray(sample, np.float32)
        name = codec_name or DEFAULT_CODEC
        codec: Any = faiss.index_factory(sample.shape[1], name, faiss.METRIC_INNER_PRODUCT)
        if name in _SQ_RANGES:
            codec.sq.rangestat = faiss.ScalarQuantizer.RS_meanstd
            codec.sq.rangestat_arg = _SQ_RANGES[name]
        elif name in _SQ_MARGIN:
            codec.sq.rangestat_arg = _SQ_MARGIN[name]
        codec.train(sample)
        target = Path(store_root) / folder
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target / CODEC_FILE, faiss.serialize_index(codec).tobytes())
        return cls(store_root, folder)

    def close(self) -> None:
        self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- writing -----------------------------------------------------------------------------------
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return self.codec.sa_encode(np.ascontiguousarray(vectors, np.float32))

    def write(self, ids: np.ndarray, vectors: np.ndarray, sync: bool = True) -> None:
        """Write the codes of ``vectors`` at rows ``ids`` (durable once this returns, with ``sync``)."""
        self.write_codes(ids, self.encode(vectors), sync)

    def write_codes(self, ids: np.ndarray, codes: np.ndarray, sync: bool = True) -> None:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], np.ascontiguousarray(codes[order])
        # One pwrite per run of consecutive ids (a batch of new items is one run).
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(ids)]):
            os.pwrite(self._fd, codes[start:end].tobytes(), int(ids[start]) * self.width)
        if sync:
            os.fsync(self._fd)

    # -- reading -----------------------------------------------------------------------------------
    def _mapped(self, max_id: int) -> np.ndarray:
        """The file as ``uint8 [rows, width]``, remapped when it has grown past ``max_id``."""
        if self._map is None or max_id >= len(self._map):
            rows = os.fstat(self._fd).st_size // self.width
            self._map = np.memmap(self.path, np.uint8, "r", shape=(rows, self.width)) if rows else None
            if self._map is None or max_id >= len(self._map):
                raise KeyError(f"no code for item {max_id} in {self.path} (the file holds {rows} rows)")
        return self._map

    def codes(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.empty((0, self.width), np.uint8)
        return np.asarray(self._mapped(int(ids.max()))[ids])

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """float32 ``[len(ids), dim]``: the vectors as the codes give them back."""
        codes = self.codes(ids)
        if not len(codes):
            return np.empty((0, self.dim), np.float32)
        return self.codec.sa_decode(np.ascontiguousarray(codes))

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.codec.sa_decode(np.ascontiguousarray(codes))

    def disk_bytes(self) -> int:
        return os.fstat(self._fd).st_size + (self.folder / CODEC_FILE).stat().st_size
