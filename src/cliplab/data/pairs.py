"""Image-text pairs from tables and image folders, and the caption filter.

Sources
-------
* a CSV / TSV / JSONL table with an image path column and a caption column
  (relative image paths are resolved against the table's folder);
* a folder of images with caption side files (``x.jpg`` + ``x.txt``, recursive).

Tables and folders are *map-style* sources: :func:`read_pairs` lists their pairs, which
:class:`cliplab.data.loader.PairDataset` loads.  :func:`source_kind` tells them
apart from tar shards (:mod:`cliplab.data.shards`).  :func:`caption_rule` and
:func:`filter_captions` drop pairs with unusable captions.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from glob import has_magic
from pathlib import Path
from typing import Any, Union

from ..files import parse_jsonl
from ..images import IMAGE_EXTENSIONS

__all__ = [
    "CAPTION_COLUMNS",
    "CAPTION_RULES",
    "IMAGE_COLUMNS",
    "Pair",
    "caption_rule",
    "filter_captions",
    "read_pairs",
    "source_kind",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Column names recognised as the image path, in order of preference (case-insensitive).
IMAGE_COLUMNS: tuple[str, ...] = ("image", "filepath", "path", "image_path", "img", "file", "filename")
#: Column names recognised as the caption, in order of preference (case-insensitive).
CAPTION_COLUMNS: tuple[str, ...] = ("caption", "text", "title")
#: Names of the caption filter rules, in the order they are checked.
CAPTION_RULES: tuple[str, ...] = ("empty", "numeric", "filename")

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


# =========================================================================== caption filter

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015"
_NUMERIC_RE = re.compile(rf"(?:isbn(?:-1[03])?[\s:#-]*)?[\d\sxX.,:;/#+()\-{_DASHES}]+", re.IGNORECASE)
_FILE_EXT_RE = re.compile(
    r"[^\n/\\]{0,200}\.(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|heic|heif|avif|raw|cr2|nef|arw|dng|svg|"
    r"mp4|mov|avi|mkv|pdf)",
    re.IGNORECASE,
)
_CAMERA_RE = re.compile(
    r"(?:img|dsc[nf]?|dcim|pict?|pic|mvimg|pxl|vid|mov|gopr|gp|dji|wp|imag|sam|p|screenshot|scan|photo|image)"
    r"[_\-]?\d{2,}[\w\-.]*",
    re.IGNORECASE,
)
_TOKEN_RE = re.compile(r"[\w\-.]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def _is_filename_like(text: str) -> bool:
    if _FILE_EXT_RE.fullmatch(text) or _CAMERA_RE.fullmatch(text):
        return True
    if not _TOKEN_RE.fullmatch(text) or len(text) < 6:
        return False
    digits = sum(c.isdigit() for c in text)
    if "_" in text and digits >= 3:  # 12345678_abcdef, 2021_05_03, img_0001_a
        return True
    compact = text.replace("-", "")
    if len(compact) >= 8 and digits >= 2 and _HEX_RE.fullmatch(compact):  # hashes, UUIDs
        return True
    return digits >= 4 and digits * 2 >= len(text)  # 20210503T1422, B07X12345


def caption_rule(caption: str) -> str | None:
    """Name of the first :data:`CAPTION_RULES` rule that rejects ``caption``, or ``None``.

    * ``"empty"``: empty or whitespace only;
    * ``"numeric"``: only digits, dashes, ``X`` and number punctuation (prices, dates,
      ISBNs such as ``978-3-16-148410-0`` or ``0-306-40615-X``, optionally prefixed
      by ``ISBN``);
    * ``"filename"``: looks like a file name: ends with a media file extension
      (``photo.png``), a camera name (``IMG_1234``, ``DSC0001``, ``PXL_2021...``), or a
      single token that is hash-like or mostly digits (``12345678_abcdef``).
    """
    text = caption.strip()
    if not text:
        return "empty"
    if _NUMERIC_RE.fullmatch(text) and any(c.isdigit() for c in text):
        return "numeric"
    if _is_filename_like(text):
        return "filename"
    return None


def filter_captions(pairs: Iterable[Pair]) -> tuple[list[Pair], dict[str, int]]:
    """Remove pairs with unusable captions (see :func:`caption_rule`).

    Returns:
        The kept pairs (order preserved) and the number removed by each rule of
        :data:`CAPTION_RULES` (every rule is present, possibly with 0).
    """
    counts = dict.fromkeys(CAPTION_RULES, 0)
    kept: list[Pair] = []
    for pair in pairs:
        rule = caption_rule(pair.caption)
        if rule is None:
            kept.append(pair)
        else:
            counts[rule] += 1
    return kept, counts
