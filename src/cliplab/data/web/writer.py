"""Crash-safe shard writing: a journal per shard while it downloads, then the shard written aside and
renamed into place.

Shard ``i`` holds the URL list's rows ``[i * shard_size, (i + 1) * shard_size)``; a sample's key is
its row number (9 digits), so a URL can only ever land in its own shard, under its own key.

While a shard downloads, each URL's result (its metadata, and the stored image if it succeeded) is
appended to ``shard-NNNNNN.journal`` as one framed record (length + CRC32): a ``kill -9`` keeps every
record written before it (the kernel has them), and a record cut by the kill fails its check and is
dropped (and the file truncated there) when the journal is reopened. When every row of the shard has
a result, :func:`finalize_shard` writes

* ``shard-NNNNNN.tar``: the WebDataset shard (``KEY.jpg``, ``KEY.txt``, ``KEY.json``), in row order,
  with fixed member metadata, so the same results give the same bytes whatever the concurrency;
* ``shard-NNNNNN.parquet``: one row per URL (status, failure class and message, sizes, SHA-256, ...,
  and the URL list's other columns);
* ``shard-NNNNNN.stats.json``: the counts;

each to a hidden temporary name, fsynced, then renamed (the Parquet file last: it marks the shard
done), and only then removes the journal. A shard is therefore visible complete or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...files import atomic_open, atomic_write_text

__all__ = ["RESULT_COLUMNS", "ShardFiles", "ShardJournal", "finalize_shard", "read_shard_results", "sample_key"]

_MAGIC = b"CLJ1"
_HEADER = struct.Struct("<4sIII")  # magic, meta length, image length, crc32(meta + image)

#: The result columns of a shard's Parquet file, before the URL list's own columns.
RESULT_COLUMNS: tuple[str, ...] = (
    "key",
    "url",
    "caption",
    "status",
    "error",
    "http_status",
    "final_url",
    "width",
    "height",
    "original_width",
    "original_height",
    "original_bytes",
    "original_format",
    "sha256",
    "attempts",
)


def sample_key(row: int) -> str:
    return f"{row:09d}"


@dataclass(frozen=True)
class ShardFiles:
    """The file names of shard ``index`` in ``out``."""

    out: Path
    index: int

    @property
    def stem(self) -> str:
        return f"shard-{self.index:06d}"

    @property
    def tar(self) -> Path:
        return self.out / f"{self.stem}.tar"

    @property
    def parquet(self) -> Path:
        return self.out / f"{self.stem}.parquet"

    @property
    def stats(self) -> Path:
        return self.out / f"{self.stem}.stats.json"

    @property
    def journal(self) -> Path:
        return self.out / f"{self.stem}.journal"

    def done(self) -> bool:
        return self.parquet.exists() and self.tar.exists()


class ShardJournal:
    """The append-only record of one shard's results (one writer: the file is locked)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FileExistsError(
                f"{path} is being written by another download; wait for it or stop it first"
            ) from None
        self.entries: dict[int, tuple[dict[str, Any], int, int]] = {}  # row -> (meta, image offset, image size)
        self._end = self._scan()
        os.ftruncate(self._fd, self._end)  # drop a record cut by a kill
        os.lseek(self._fd, self._end, os.SEEK_SET)

    def _scan(self) -> int:
        size = os.fstat(self._fd).st_size
        offset = 0
        with open(self.path, "rb") as handle:
            while offset + _HEADER.size <= size:
                handle.seek(offset)
                magic, meta_len, image_len, crc = _HEADER.unpack(handle.read(_HEADER.size))
                end = offset + _HEADER.size + meta_len + image_len
                if magic != _MAGIC or end > size:
                    break
                payload = handle.read(meta_len + image_len)
                if zlib.crc32(payload) != crc:
                    break
                try:
                    meta = json.loads(payload[:meta_len])
                except ValueError:
                    break
                self.entries[int(meta["row"])] = (meta, offset + _HEADER.size + meta_len, image_len)
                offset = end
        return offset

    def append(self, row: int, meta: dict[str, Any], image: bytes | None) -> None:
        meta = {"row": row, **meta}
        meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
        image = image or b""
        payload = meta_bytes + image
        record = _HEADER.pack(_MAGIC, len(meta_bytes), len(image), zlib.crc32(payload)) + payload
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.entries[row] = (meta, self._end + _HEADER.size + len(meta_bytes), len(image))
        self._end += len(record)

    def image(self, row: int) -> bytes:
        _, offset, size = self.entries[row]
        return os.pread(self._fd, size, offset)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the lock
            self._fd = -1

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def _sample_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode()


def read_shard_results(files: ShardFiles) -> list[dict[str, Any]]:
    """The result rows of a finished shard (its Parquet file), in row order."""
    import pyarrow.parquet as pq

    return pq.read_table(files.parquet).to_pylist()


def iter_tar_images(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(key, ext, image bytes)`` of the images in one of our shards."""
    with tarfile.open(path, "r:") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if ext in ("txt", "json"):
                continue
            handle = tf.extractfile(member)
            if handle is not None:
                yield key, ext, handle.read()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finalize_shard(
    files: ShardFiles,
    rows: list[dict[str, Any]],
    results: dict[int, dict[str, Any]],
    images: dict[int, tuple[str, Any]],
    first_row: int,
    extra_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write shard ``files.index`` from every row's result.

    Args:
        rows: the URL list's rows of this shard (``url``, ``caption`` and the carried columns).
        results: row number -> result (the fetch/processing metadata, without the row's own columns).
        images: row number -> ``(ext, loader)`` for the successful rows; ``loader()`` gives the bytes.
        first_row: the row number of ``rows[0]``.

    Returns:
        The shard's stats.
    """
    import pyarrow as pa

    from .tables import write_parquet

    out = files.out
    records: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    stored_bytes = original_bytes = attempts = 0
    tmp = out / f".{files.stem}.tar.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for offset, row in enumerate(rows):
                    number = first_row + offset
                    result = results[number]
                    record = {
                        "key": sample_key(number),
                        "url": row["url"],
                        "caption": row["caption"],
                        **{c: result.get(c) for c in RESULT_COLUMNS if c not in ("key", "url", "caption")},
                        **{k: v for k, v in row.items() if k not in ("url", "caption")},
                    }
                    records.append(record)
                    status = record["status"]
                    counts[status] = counts.get(status, 0) + 1
                    attempts += int(record.get("attempts") or 0)
                    original_bytes += int(record.get("original_bytes") or 0)
                    if status != "ok":
                        continue
                    ext, load = images[number]
                    data = load()
                    stored_bytes += len(data)
                    key = record["key"]
                    _add_member(tf, f"{key}.{ext}", data)
                    _add_member(tf, f"{key}.txt", str(row["caption"]).encode("utf-8", "surrogateescape"))
                    _add_member(tf, f"{key}.json", _sample_json(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, files.tar)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    result_types = {
        "key": pa.string(),
        "url": pa.string(),
        "caption": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "http_status": pa.int32(),
        "final_url": pa.string(),
        "width": pa.int32(),
        "height": pa.int32(),
        "original_width": pa.int32(),
        "original_height": pa.int32(),
        "original_bytes": pa.int64(),
        "original_format": pa.string(),
        "sha256": pa.string(),
        "attempts": pa.int32(),
    }
    columns = {name: pa.array([r[name] for r in records], type) for name, type in result_types.items()}
    for name in rows[0] if rows else {}:
        if name not in ("url", "caption"):
            columns[name] = pa.array([r.get(name) for r in records])
    stats = {
        "shard": files.stem,
        "urls": len(rows),
        "ok": counts.get("ok", 0),
        "statuses": dict(sorted(counts.items())),
        "requests": attempts,
        "original_bytes": original_bytes,
        "stored_bytes": stored_bytes,
        **(extra_stats or {}),
    }
    with atomic_open(files.stats, "w") as handle:
        handle.write(json.dumps(stats, indent=1) + "\n")
    write_parquet(files.parquet, pa.table(columns))  # last: the shard is done
    _fsync_dir(out)
    return stats


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
