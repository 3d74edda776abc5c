"""What an indexing run has to do: walk the image folders, read the captions file, and compare both
with the store (new, changed, deleted, unchanged)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_jsonl
from ..images import IMAGE_EXTENSIONS
from .store import TEXT_KEY_PREFIX


@dataclass(frozen=True)
class FileEntry:
    """An image file found on disk."""

    key: str  # the absolute, resolved path
    size: int
    mtime_ns: int


@dataclass
class Plan:
    """The work of one run. ``to_embed`` holds new and changed files; ``known_failures`` files that
    failed before and have not changed since (not retried)."""

    to_embed: list[FileEntry] = field(default_factory=list)
    unchanged: int = 0
    known_failures: int = 0
    deleted: list[str] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (key, caption) new or changed
    texts_unchanged: int = 0

    def summary(self) -> dict:
        return {
            "to_embed": len(self.to_embed),
            "unchanged": self.unchanged,
            "known_failures": self.known_failures,
            "deleted": len(self.deleted),
            "texts_to_embed": len(self.texts),
            "texts_unchanged": self.texts_unchanged,
        }


def find_images(roots: Sequence[str | os.PathLike]) -> list[FileEntry]:
    """Every image file under ``roots`` (files or folders, recursive), sorted by path. Missing roots raise
    ``FileNotFoundError``; files that vanish during the walk are skipped."""
    found: dict[str, FileEntry] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        candidates: Iterable[Path] = [root] if root.is_file() else _walk(root)
        for path in candidates:
            if path.suffix.lower().lstrip(".") not in IMAGE_EXTENSIONS or path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            key = str(path.resolve())
            found[key] = FileEntry(key, stat.st_size, stat.st_mtime_ns)
    return [found[key] for key in sorted(found)]


def _walk(root: Path) -> Iterable[Path]:
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]  # .thumbnails, .git, ...
        for name in sorted(files):
            yield Path(directory) / name


#: Header names of the id and text columns of a captions CSV, in order of preference.
CAPTION_ID_COLUMNS = ("id", "key", "image", "file", "filename", "path", "name")
CAPTION_TEXT_COLUMNS = ("text", "caption", "title", "description")


def read_captions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(id, text)`` pairs from a CSV or JSONL file. Blank texts are skipped.

    CSV: with a header row naming a text column (``text``, ``caption``, ``title`` or ``description``)
    the columns are taken by name (the id from ``id``, ``key``, ``image``, ``file``, ``filename``,
    ``path`` or ``name``, else the row number); without one, the first column is the id and the rest
    of the row the text. JSONL: ``{"id": ..., "text": ...}`` (``caption`` is accepted for ``text``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such captions file: {path}")
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, record in enumerate(read_jsonl(path), start=1):
            text = record.get("text", record.get("caption"))
            if text is None:
                raise ValueError(f"{path}:{number}: a caption record needs 'text' (or 'caption')")
            pairs.append((str(record.get("id", number)), str(text)))
        return [(cid, text) for cid, text in pairs if text.strip()]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    text_column = next((header.index(name) for name in CAPTION_TEXT_COLUMNS if name in header), None)
    if text_column is not None:
        id_column = next((header.index(name) for name in CAPTION_ID_COLUMNS if name in header), None)
        for number, row in enumerate(rows[1:], start=1):
            if len(row) <= max(text_column, id_column or 0):
                raise ValueError(f"{path}: row {number + 1} has {len(row)} column(s); the header has {len(header)}")
            # an unquoted comma in a last-column text splits it: join the rest of the row back
            text = ",".join(row[text_column:]) if text_column == len(header) - 1 else row[text_column]
            pairs.append((row[id_column] if id_column is not None else str(number), text))
    else:
        for number, row in enumerate(rows, start=1):
            if len(row) < 2:
                raise ValueError(f"{path}: row {number} has {len(row)} column(s); expected id,text")
            pairs.append((row[0], ",".join(row[1:])))
    return [(cid, text) for cid, text in pairs if text.strip()]


def make_plan(
    files: Sequence[FileEntry],
    stored: dict[str, tuple[int, int, int, str]],
    failed: dict[str, tuple[int, int]],
    roots: Sequence[str | os.PathLike],
    captions: Sequence[tuple[str, str]] | None = None,
    stored_texts: dict[str, tuple[int, str]] | None = None,
) -> Plan:
    """Compare the files found under ``roots`` with the store's ``stored`` images and ``failed`` files,
    and a captions file's texts (``None``: no file given) with the store's texts. A captions file is
    the whole set: stored texts it no longer holds are deleted."""
    plan = Plan()
    seen = set()
    for entry in files:
        seen.add(entry.key)
        state = stored.get(entry.key)
        if state is not None and (state[1], state[2]) == (entry.size, entry.mtime_ns):
            plan.unchanged += 1
        elif state is None and failed.get(entry.key) == (entry.size, entry.mtime_ns):
            plan.known_failures += 1
        else:
            plan.to_embed.append(entry)
    # Only files under the roots of this run can have been deleted; other roots are left alone.
    resolved = [Path(root).resolve() for root in roots]
    file_roots = {str(root) for root in resolved if not root.is_dir()}
    folder_roots = tuple(str(root).rstrip(os.sep) + os.sep for root in resolved if root.is_dir())
    for key in list(stored) + list(failed):
        if key not in seen and (key in file_roots or key.startswith(folder_roots)):
            plan.deleted.append(key)
    stored_texts = stored_texts or {}
    if captions is None:
        return plan
    current = {TEXT_KEY_PREFIX + caption_id for caption_id, _ in captions}
    plan.deleted += [key for key in stored_texts if key not in current]
    for caption_id, text in dict(captions).items():
        key = TEXT_KEY_PREFIX + caption_id
        if key in stored_texts and stored_texts[key][1] == text:
            plan.texts_unchanged += 1
        else:
            plan.texts.append((key, text))
    return plan
