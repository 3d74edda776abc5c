"""URL lists: CSV, TSV, JSONL and Parquet tables of image URLs and captions, read into Arrow tables.

:func:`read_url_table` finds the URL and caption columns (``url``/``URL``/``image_url``/...,
``caption``/``TEXT``/``alt``/..., case-insensitive, or named explicitly), renames them ``url`` and
``caption`` and keeps every other column as it is, to be carried into the metadata. CSV and TSV
columns are read as text, never guessed as numbers.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CAPTION_COLUMNS", "TABLE_SUFFIXES", "URL_COLUMNS", "file_fingerprint", "read_url_table", "write_parquet"]

#: Column names recognised as the image URL, in order of preference (case-insensitive).
URL_COLUMNS: tuple[str, ...] = ("url", "image_url", "img_url", "image", "src", "link")
#: Column names recognised as the caption, in order of preference (case-insensitive).
CAPTION_COLUMNS: tuple[str, ...] = ("caption", "text", "alt", "alt_text", "title", "description")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".parquet")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def is_url_table(path: str | os.PathLike) -> bool:
    return _suffix(Path(path)) in TABLE_SUFFIXES


def _find(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted in names:
            return wanted
        raise ValueError(f"{path}: no column {wanted!r} (columns: {list(names)})")
    lowered = {n.strip().lower(): n for n in reversed(list(names))}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    return None


def read_table_any(path: str | os.PathLike) -> Any:
    """Any CSV/TSV/JSONL/Parquet file (optionally gzipped, except Parquet) as a ``pyarrow.Table``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no such URL list: {os.fspath(path)!r}")
    suffix = _suffix(p)
    if suffix == ".parquet":
        return pq.read_table(p)
    if suffix in (".jsonl", ".ndjson", ".json"):
        if p.stat().st_size == 0:
            return pa.table({})
        try:
            return pajson.read_json(p)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{p}: not a JSON-lines table ({exc})") from None
    if suffix in (".csv", ".tsv", ".tab"):
        delimiter = "," if suffix == ".csv" else "\t"
        import gzip

        opener = gzip.open if p.suffix.lower() == ".gz" else open
        with opener(p, "rt", encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
        if not header:
            return pa.table({})
        return pacsv.read_csv(
            p,
            read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    raise ValueError(f"{p}: unsupported URL list type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}")


def read_url_table(
    path: str | os.PathLike,
    url_column: str | None = None,
    caption_column: str | None = None,
    need_caption: bool = True,
    reserved: Sequence[str] = (),
) -> Any:
    """The URL list at ``path`` with its URL and caption columns named ``url`` and ``caption``
    (both as strings; a missing caption is ``""``), the other columns as they are; one whose name is
    ``url``, ``caption`` or in ``reserved`` (the names the caller adds) gets the suffix ``_input``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    p = Path(os.fspath(path))
    table = read_table_any(p)
    names = table.column_names
    url_key = _find(names, url_column, URL_COLUMNS, "url", p)
    if url_key is None:
        raise ValueError(
            f"{p}: cannot find the URL column among {names}; expected one of {list(URL_COLUMNS)} or pass --url-column"
        )
    caption_key = _find(names, caption_column, CAPTION_COLUMNS, "caption", p)
    if caption_key is None and need_caption:
        raise ValueError(
            f"{p}: cannot find the caption column among {names}; expected one of {list(CAPTION_COLUMNS)} "
            "or pass --caption-column"
        )
    columns: dict[str, Any] = {}
    urls = pc.fill_null(pc.cast(table[url_key], pa.string()), "")
    columns["url"] = pc.utf8_trim_whitespace(urls)
    if caption_key is not None:
        columns["caption"] = pc.utf8_trim_whitespace(pc.fill_null(pc.cast(table[caption_key], pa.string()), ""))
    else:
        columns["caption"] = pa.array([""] * table.num_rows, pa.string())
    for name in names:
        if name in (url_key, caption_key):
            continue
        out = name if name not in ("url", "caption", *reserved) else f"{name}_input"
        columns[out] = table[name]
    return pa.table(columns)


def file_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: a run refuses to resume on a different URL list."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_parquet(path: str | os.PathLike, table: Any) -> None:
    """Write a ``pyarrow.Table`` as Parquet atomically (aside, fsync, rename)."""
    import pyarrow.parquet as pq

    from ...files import atomic_open

    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
