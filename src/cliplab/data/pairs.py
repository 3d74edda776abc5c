"""Image-text pairs from tables and image folders.

Sources
-------
* a CSV / TSV / JSONL table with an image path column and a caption column
  (relative image paths are resolved against the table's folder);
* a folder of images with caption side files (``x.jpg`` + ``x.txt``, recursive).

Tables and folders are *map-style* sources: :func:`read_pairs` lists their pairs, which
:class:`cliplab.data.loader.PairDataset` loads.  :func:`source_kind` tells them
apart from tar shards (:mod:`cliplab.data.shards`).  The caption rules that drop pairs with
unusable captions live in :mod:`cliplab.data.captions`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from glob import has_magic
from pathlib import Path
from typing import Any, Union

from ..files import parse_jsonl
from ..images import IMAGE_EXTENSIONS

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_COLUMNS",
    "Pair",
    "read_pairs",
    "source_kind",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Column names recognised as the image path, in order of preference (case-insensitive).
IMAGE_COLUMNS: tuple[str, ...] = ("image", "filepath", "path", "image_path", "img", "file", "filename")
#: Column names recognised as the caption, in order of preference (case-insensitive).
CAPTION_COLUMNS: tuple[str, ...] = ("caption", "text", "title")

_TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TABLE_SUFFIXES = (*_TABLE_DELIMITERS, *_JSONL_SUFFIXES)


# =========================================================================== pairs


@dataclass(frozen=True)
class Pair:
    """One image-text pair: the image file and its caption."""

    image: Path
    caption: str


def source_kind(path: PathLike) -> str:
    """Classify a source as ``"shards"`` (tar shards) or ``"pairs"`` (table or image folder).

    Brace patterns, globs, ``.tar`` files and folders that directly contain ``.tar``
    files are shards; CSV/TSV/JSONL files and other folders are pairs.

    Raises:
        ValueError: for a file of another type.
        FileNotFoundError: for a plain path that does not exist.
    """
    text = os.fspath(path)
    if "{" in text or has_magic(text) or text.endswith(".tar"):
        return "shards"
    p = Path(text).expanduser()
    if p.is_dir():
        return "shards" if any(p.glob("*.tar")) else "pairs"
    if not p.exists():
        raise FileNotFoundError(f"data source not found: {text!r}")
    if p.suffix.lower() in _TABLE_SUFFIXES:
        return "pairs"
    raise ValueError(
        f"unsupported data source {text!r}: expected a {'/'.join(_TABLE_SUFFIXES)} table, "
        "a folder of images with .txt captions, or .tar shards"
    )


def _find_column(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, src: Path) -> str:
    if wanted is not None:
        if wanted in names:
            return wanted
        raise ValueError(f"{src}: no column {wanted!r} (columns: {list(names)})")
    lowered = {n.strip().lower(): n for n in reversed(list(names))}  # first occurrence wins
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    raise ValueError(
        f"{src}: cannot find the {what} column among {list(names)}; expected one of {list(candidates)} "
        f"or pass {what}_column="
    )


def _resolve_image(value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _caption_text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _read_table(path: Path, image_column: str | None, caption_column: str | None) -> list[Pair]:
    base = path.parent
    suffix = path.suffix.lower()
    rows: Iterable[dict[str, Any]]
    pairs: list[Pair] = []
    no_image = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        if suffix in _JSONL_SUFFIXES:
            records = parse_jsonl(f, path)
            if not records:
                return []
            names: list[str] = []
            for record in records[:100]:
                names.extend(k for k in record if k not in names)
            rows = records
        else:
            reader = csv.DictReader(f, delimiter=_TABLE_DELIMITERS[suffix])
            if reader.fieldnames is None:
                return []
            names = list(reader.fieldnames)
            rows = reader
        image_key = _find_column(names, image_column, IMAGE_COLUMNS, "image", path)
        caption_key = _find_column(names, caption_column, CAPTION_COLUMNS, "caption", path)
        for row in rows:
            image = _resolve_image(row.get(image_key), base)
            if image is None:
                no_image += 1
                continue
            pairs.append(Pair(image, _caption_text(row.get(caption_key))))
    if no_image:
        logger.warning("%s: skipped %d rows without an image path", path, no_image)
    return pairs


def _read_folder(root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    no_caption = 0
    images = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    for image in images:
        side = image.with_suffix(".txt")
        try:
            caption = side.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            no_caption += 1
            continue
        pairs.append(Pair(image, caption.strip()))
    if no_caption:
        logger.warning("%s: skipped %d images without a .txt caption file", root, no_caption)
    if not pairs and any(root.glob("*.tar")):
        raise ValueError(f"{root} holds .tar shards, not images; read it with ShardStream / expand_shards")
    return pairs


def read_pairs(path: PathLike, image_column: str | None = None, caption_column: str | None = None) -> list[Pair]:
    """Read image-text pairs from a table or a folder.

    Args:
        path: a ``.csv``, ``.tsv`` (or ``.tab``) or ``.jsonl`` (``.ndjson``) file, or a
            folder searched recursively for images (``jpg``, ``jpeg``, ``png``, ``webp``,
            ``bmp``, ``gif``, ``tif``, ``tiff``) that have a caption side file with the
            same stem and the suffix ``.txt``.  Images without one are skipped (logged).
        image_column: column holding the image path; by default the first of
            :data:`IMAGE_COLUMNS` present (case-insensitive).  Relative paths are
            resolved against the table's folder.
        caption_column: column holding the caption; by default the first of
            :data:`CAPTION_COLUMNS` present (case-insensitive).

    Returns:
        The pairs in file order (folders: sorted by path).  Captions are stripped of
        surrounding whitespace; a missing caption becomes ``""``.  Rows without an
        image path are skipped (logged).  Image files are not opened.
    """
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        return _read_folder(p)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {os.fspath(path)!r}")
    suffix = p.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise ValueError(f"{p}: unsupported table type {suffix!r}; expected one of {list(_TABLE_SUFFIXES)}")
    return _read_table(p, image_column, caption_column)
