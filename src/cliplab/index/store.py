"""The embedded store: vectors and metadata of indexed images and texts in one SQLite database.

SQLite gives the crash safety: every batch of new vectors is one transaction, so a process killed at
any moment leaves a database that opens and holds exactly the batches committed before the kill
(write-ahead log, ``synchronous=FULL``). Readers (searches, the HTTP service) never block the writer.
One writer at a time is enforced with an advisory lock on ``DIR/write.lock``.

Layout of a store folder::

    store.sqlite        items, failures, meta (model, embedding size)
    write.lock          held by the process that updates the store
    ann/                FAISS indexes built from the vectors (see :mod:`cliplab.index.ann`); derived data
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import identity
from ..identity import ModelIdentity

SCHEMA_VERSION = 1
DATABASE = "store.sqlite"
LOCK_FILE = "write.lock"
TEXT_KEY_PREFIX = "text:"  # a text item's key is this prefix + its id in the captions file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,       -- absolute path of an image, or 'text:' + caption id
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    path TEXT,                      -- image file (NULL for texts)
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    caption TEXT,                   -- the text of a text item
    vector BLOB NOT NULL            -- float32, L2-normalised, embed_dim values
);
CREATE INDEX IF NOT EXISTS items_kind ON items (kind);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    path TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class StoreError(RuntimeError):
    """A store that cannot be opened or used as asked; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process is updating the store."""


class ModelMismatchError(StoreError, identity.ModelMismatchError):
    """The store was built with another model than the one given."""


@dataclass(frozen=True)
class Item:
    """One stored image or text (without its vector)."""

    id: int
    key: str
    kind: str
    path: str | None
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    caption: str | None

    @property
    def text_id(self) -> str | None:
        """A text's id in its captions file (``None`` for images)."""
        return self.key[len(TEXT_KEY_PREFIX) :] if self.kind == "text" else None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "path": self.path,
            "caption": self.caption,
            "text_id": self.text_id,
            "size": self.size,
            "sha256": self.sha256,
            "key": self.key,
        }


@dataclass(frozen=True)
class NewItem:
    """An item ready to be written: metadata plus its vector."""

    key: str
    kind: str
    vector: np.ndarray
    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    caption: str | None = None


_ITEM_COLUMNS = "id, key, kind, path, size, mtime_ns, sha256, caption"


class Store:
    """A store folder opened for reading, or for writing with ``writer=True`` (takes the write lock).

    Use as a context manager. ``Store.create`` makes a new one for a model.
    """

    def __init__(self, root: str | os.PathLike, writer: bool = False, wait: bool = False, _lock=None):
        self.root = Path(root)
        database = self.root / DATABASE
        self._db = None
        self._lock_file = _lock
        if writer and _lock is None:
            if not database.is_file():
                raise StoreError(f"{self.root} is not a cliplab store (no {DATABASE}); create one with `cliplab index`")
            self._lock_file = _acquire_lock(self.root / LOCK_FILE, wait)
        if not database.is_file():
            self.close()
            raise StoreError(f"{self.root} is not a cliplab store (no {DATABASE}); create one with `cliplab index`")
        self._db = _connect(database)
        try:
            version = self.meta("schema_version")
        except sqlite3.DatabaseError as error:
            self.close()
            raise StoreError(f"{database} is not a readable cliplab store: {error}") from None
        if version is None or int(version) != SCHEMA_VERSION:
            self.close()
            raise StoreError(f"{self.root}: store format version {version!r}, this cliplab reads {SCHEMA_VERSION}")
        self.model = ModelIdentity.from_json(self.meta("model"))

    @classmethod
    def create(cls, root: str | os.PathLike, model: ModelIdentity, wait: bool = False) -> Store:
        """Open the store at ``root`` for writing, creating it for ``model`` if it does not exist.

        The write lock is taken first (``wait``: queue behind another writer instead of failing) and
        kept, so creating and opening are one step no other process can come between."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        lock = _acquire_lock(root / LOCK_FILE, wait)
        try:
            if not (root / DATABASE).is_file():
                # Built aside and renamed into place, so a store either exists complete or not at all.
                building = root / (DATABASE + ".creating")
                building.unlink(missing_ok=True)
                db = _connect(building, wal=False)
                with db:
                    db.executescript(_SCHEMA)
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (model.to_json(),))
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('created', ?)", (str(time.time()),))
                db.close()
                os.replace(building, root / DATABASE)
            store = cls(root, writer=True, _lock=lock)
        except BaseException:
            _release_lock(lock)
            raise
        store.check_model(model)
        return store

    def snapshot(self, read):
        """Run ``read()`` (several queries) inside one read transaction: one consistent snapshot."""
        self._db.execute("BEGIN")
        try:
            return read()
        finally:
            self._db.execute("COMMIT")

    @property
    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite's ``PRAGMA data_version``)."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- lifecycle ------------------------------------------------------------------------------
    def release_in_child(self) -> None:
        """In a forked child (a decoding worker), drop the inherited write-lock handle, so the lock dies
        with the writer process itself and not with the last of its children."""
        if self._lock_file is not None:
            os.close(self._lock_file.fileno())

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
            self._db = None
        if self._lock_file is not None:
            _release_lock(self._lock_file)
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_model(self, model: ModelIdentity) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` is the model the store was built with."""
        if model.fingerprint != self.model.fingerprint:
            raise ModelMismatchError(
                f"{self.root} was indexed with model {self.model.name!r} (fingerprint {self.model.fingerprint[:12]}), "
                f"not {model.name!r} ({model.fingerprint[:12]}): pass --model {self.model.name} or use another --store"
            )

    # -- metadata ------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- reading --------------------------------------------------------------------------------
    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM items WHERE kind = ?", (kind,)).fetchone()[0]

    def items(self, ids: Sequence[int]) -> dict[int, Item]:
        """The items with these ids (missing ids are absent from the result)."""
        found: dict[int, Item] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({marks})", chunk):
                found[row[0]] = Item(*row)
        return found

    def item(self, item_id: int) -> Item | None:
        return self.items([item_id]).get(int(item_id))

    def item_by_key(self, key: str) -> Item | None:
        row = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE key = ?", (key,)).fetchone()
        return Item(*row) if row else None

    def vector(self, item_id: int) -> np.ndarray | None:
        row = self._db.execute("SELECT vector FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def vectors(self, kind: str, after_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [N], vectors float32 [N, D])`` of one kind with ``id > after_id``, in id order."""
        rows = self._db.execute(
            "SELECT id, vector FROM items WHERE kind = ? AND id > ? ORDER BY id", (kind, after_id)
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.empty((len(rows), self.model.embed_dim), dtype=np.float32)
        for i, row in enumerate(rows):
            vectors[i] = np.frombuffer(row[1], dtype=np.float32)
        return ids, vectors

    def ids(self, kind: str) -> np.ndarray:
        rows = self._db.execute("SELECT id FROM items WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def file_states(self) -> dict[str, tuple[int, int, int, str]]:
        """``key -> (id, size, mtime_ns, sha256)`` of every stored image."""
        rows = self._db.execute("SELECT key, id, size, mtime_ns, sha256 FROM items WHERE kind = 'image'")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def text_states(self) -> dict[str, tuple[int, str]]:
        """``key -> (id, caption)`` of every stored text."""
        rows = self._db.execute("SELECT key, id, caption FROM items WHERE kind = 'text'")
        return {r[0]: (r[1], r[2]) for r in rows}

    def failures(self) -> list[dict]:
        rows = self._db.execute("SELECT key, path, reason, at FROM failures ORDER BY key").fetchall()
        return [{"key": r[0], "path": r[1], "reason": r[2], "at": r[3]} for r in rows]

    def failure_states(self) -> dict[str, tuple[int, int]]:
        rows = self._db.execute("SELECT key, size, mtime_ns FROM failures")
        return {r[0]: (r[1], r[2]) for r in rows}

    def iter_items(self, kind: str | None = None) -> Iterator[Item]:
        query = f"SELECT {_ITEM_COLUMNS} FROM items" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        for row in self._db.execute(query, (kind,) if kind else ()):
            yield Item(*row)

    def stats(self) -> dict:
        return {
            "store": str(self.root),
            "model": self.model.name,
            "embed_dim": self.model.embed_dim,
            "images": self.count("image"),
            "texts": self.count("text"),
            "failures": self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0],
        }

    # -- writing (one transaction per call) ----------------------------------------------------------
    @contextlib.contextmanager
    def _write_errors(self):
        """One transaction; a full disk becomes a :class:`StoreError` that says what was kept."""
        try:
            with self._db:
                yield
        except (sqlite3.OperationalError, OSError) as error:
            if _disk_full(error):
                raise StoreError(
                    f"the disk holding {self.root} is full ({error}): this batch was not written; "
                    "everything committed before it is kept. Free some space and run again."
                ) from None
            raise

    def _require_writer(self) -> None:
        if self._lock_file is None:
            raise StoreError(f"{self.root} is open read-only")

    def put(
        self,
        items: Iterable[NewItem],
        failures: Iterable[tuple[str, str | None, int | None, int | None, str]] = (),
        delete_keys: Iterable[str] = (),
        touches: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        """Insert or replace ``items``, record ``failures`` (key, path, size, mtime_ns, reason), delete
        ``delete_keys``, and record new (size, mtime_ns) of unchanged files in ``touches`` (key, size,
        mtime_ns): all in one transaction, so a crash keeps all of it or none."""
        self._require_writer()
        now = time.time()
        with self._write_errors():
            for key in delete_keys:
                self._db.execute("DELETE FROM items WHERE key = ?", (key,))
                self._db.execute("DELETE FROM failures WHERE key = ?", (key,))
            for item in items:
                vector = np.ascontiguousarray(item.vector, dtype=np.float32)
                if vector.shape != (self.model.embed_dim,):
                    raise StoreError(
                        f"vector of {item.key} has shape {vector.shape}, store holds {self.model.embed_dim}"
                    )
                # A changed file gets a new id, so ANN indexes see it as removed + added.
                self._db.execute("DELETE FROM items WHERE key = ?", (item.key,))
                self._db.execute("DELETE FROM failures WHERE key = ?", (item.key,))
                self._db.execute(
                    "INSERT INTO items (key, kind, path, size, mtime_ns, sha256, caption, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.key,
                        item.kind,
                        item.path,
                        item.size,
                        item.mtime_ns,
                        item.sha256,
                        item.caption,
                        vector.tobytes(),
                    ),
                )
            for key, path, size, mtime_ns, reason in failures:
                self._db.execute("DELETE FROM items WHERE key = ?", (key,))
                self._db.execute(
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                    (key, path, size, mtime_ns, reason, now),
                )
            for key, size, mtime_ns in touches:
                self._db.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE key = ?", (size, mtime_ns, key))


def read_store_model(root: str | os.PathLike) -> ModelIdentity | None:
    """The model a store records (its name or absolute path, and fingerprint), without opening the
    store for use; ``None`` if ``root`` is not a store."""
    database = Path(root) / DATABASE
    if not database.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    except sqlite3.DatabaseError:
        return None
    return ModelIdentity.from_json(row[0]) if row else None


def _disk_full(error: BaseException) -> bool:
    return "full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC


def _connect(path: Path, wal: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60.0, isolation_level="DEFERRED", check_same_thread=False)
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA busy_timeout = 60000")
    return db


def _acquire_lock(path: Path, wait: bool):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreLockedError(
            f"{path.parent} is being updated by {holder}; wait for it to finish (or pass --wait to queue behind it)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _release_lock(handle) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
