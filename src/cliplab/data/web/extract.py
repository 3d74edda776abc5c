"""``cliplab data extract``: image URLs and captions from HTML pages, WARC/WAT files and URL lists.

Inputs (files, or folders searched recursively):

* saved HTML pages (``.html``, ``.htm``, ``.xhtml``, optionally ``.gz``): the page URL is read from the
  page (a browser's ``<!-- saved from url=... -->`` mark, ``<link rel="canonical">``, ``og:url``), else
  ``base_url``; without one, relative image URLs cannot be resolved and are counted as ``unresolved``;
* WARC files (``.warc``, ``.warc.gz``): every HTML page in them (:func:`.warc.html_pages`);
* WAT files (``.wat``, ``.warc.wat.gz``): Common Crawl's link metadata, as cc2dataset reads it;
* URL lists (CSV/TSV/JSONL/Parquet with URL and caption columns).

Each image gets one row: its best caption that the caption rules accept (``alt``, then the
``<figcaption>``, then ``title``, then, with ``nearby_text``, the text around it), where the caption
came from, the page URL and the caption's detected language. Pages that opt out (robots meta tag or
``X-Robots-Tag``: ``noai``, ``noimageai``, ``noindex``, ``noimageindex``, unscoped or for cliplab) give
no rows. Duplicate (URL, caption) pairs are dropped; the ``repeated`` rule then runs over the table.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..captions import CaptionFilter
from .html import page_opt_out, parse_page
from .robots import OPT_OUT_DIRECTIVES, opted_out
from .tables import is_url_table, read_url_table, write_parquet
from .warc import html_pages, wat_pages

__all__ = ["ExtractReport", "ExtractSettings", "extract", "extract_file", "extract_summary", "input_files"]

_HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".shtml")
_SAVED_FROM_RE = re.compile(r"<!--\s*saved from url=\(\d+\)(\S+?)\s*-->", re.IGNORECASE)
_CANONICAL_RE = re.compile(
    r"<link\b[^>]*\brel\s*=\s*[\"']?canonical[\"']?[^>]*\bhref\s*=\s*[\"']([^\"'>\s]+)|"
    r"<link\b[^>]*\bhref\s*=\s*[\"']([^\"'>\s]+)[\"'][^>]*\brel\s*=\s*[\"']?canonical",
    re.IGNORECASE,
)
_OG_URL_RE = re.compile(
    r"<meta\b[^>]*\bproperty\s*=\s*[\"']og:url[\"'][^>]*\bcontent\s*=\s*[\"']([^\"']+)", re.IGNORECASE
)
OUTPUT_COLUMNS = ("url", "caption", "caption_source", "page_url", "language", "language_score")


@dataclass
class ExtractSettings:
    nearby_text: bool = False
    base_url: str = ""  # page URL of saved pages that record none
    honour_opt_outs: bool = True
    caption_filter: CaptionFilter | None = field(default_factory=CaptionFilter)  # None: keep every caption
    detect_language: bool = True
    opt_out_directives: frozenset[str] = OPT_OUT_DIRECTIVES


@dataclass
class ExtractReport:
    out: str
    inputs: int = 0
    pages: int = 0
    pages_opted_out: int = 0
    images: int = 0  # images found, before any rule
    skipped: dict[str, int] = field(default_factory=dict)  # not_http, tracker, icon, unresolved, no_caption
    duplicates: int = 0
    caption_rules: dict[str, int] = field(default_factory=dict)  # removed per rule
    rows: int = 0
    languages: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, other: ExtractReport) -> None:
        for name in ("inputs", "pages", "pages_opted_out", "images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("skipped", "caption_rules"):
            mine = getattr(self, name)
            for key, n in getattr(other, name).items():
                mine[key] = mine.get(key, 0) + n


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".wat") or ".wat." in name:
        return "wat"
    if stem.endswith((".warc", ".arc")):
        return "warc"
    if stem.endswith(_HTML_SUFFIXES):
        return "html"
    if is_url_table(path):
        return "table"
    return None


def input_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files to read: each input file, and the known files of each folder (recursive, sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(os.fspath(item)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and _kind(p))
            if not found:
                raise FileNotFoundError(f"{path}: no HTML, WARC, WAT or URL-list files in this folder")
            files.extend(found)
        elif path.is_file():
            if _kind(path) is None:
                raise ValueError(
                    f"{path}: unknown input type; expected .html/.htm, .warc(.gz), .wat(.gz) or a "
                    "CSV/TSV/JSONL/Parquet URL list"
                )
            files.append(path)
        else:
            raise FileNotFoundError(f"no such input: {os.fspath(item)!r}")
    return files


def _page_url_of_saved(html: str, fallback: str) -> str:
    head = html[:20000]
    for regex in (_SAVED_FROM_RE, _CANONICAL_RE, _OG_URL_RE):
        match = regex.search(head)
        if match:
            url = next(g for g in match.groups() if g)
            if url.startswith(("http://", "https://")):
                return url
    return fallback


def _choose(
    candidates: list[tuple[str, str]], rules: CaptionFilter | None, report: ExtractReport
) -> tuple[str, str] | None:
    """The best caption candidate the rules accept (``None``: counted under the first one's rule)."""
    if not candidates:
        report.skipped["no_caption"] = report.skipped.get("no_caption", 0) + 1
        return None
    if rules is None:
        return candidates[0]
    first_rule = None
    for source, text in candidates:
        rule = rules.rule(text)
        if rule is None:
            return source, text
        first_rule = first_rule or rule
    assert first_rule is not None
    report.caption_rules[first_rule] = report.caption_rules.get(first_rule, 0) + 1
    return None


def _rows_of_html(
    html: str, page_url: str, robots_headers: list[str], settings: ExtractSettings, report: ExtractReport
) -> list[dict[str, Any]]:
    report.pages += 1
    parsed = parse_page(html, page_url, settings.nearby_text)
    if settings.honour_opt_outs and (
        page_opt_out(parsed.robots_meta, settings.opt_out_directives)
        or opted_out(robots_headers, directives=settings.opt_out_directives)
    ):
        report.pages_opted_out += 1
        return []
    for reason, n in parsed.skipped.items():
        if n:
            key = "unresolved" if reason == "not_http" and not page_url else reason
            report.skipped[key] = report.skipped.get(key, 0) + n
    report.images += len(parsed.images) + sum(parsed.skipped.values())
    rows = []
    for image in parsed.images:
        chosen = _choose(image.captions, settings.caption_filter, report)
        if chosen is not None:
            rows.append({"url": image.url, "caption": chosen[1], "caption_source": chosen[0], "page_url": page_url})
    return rows


def extract_file(path: str | os.PathLike, settings: ExtractSettings) -> tuple[list[dict[str, Any]], ExtractReport]:
    """The candidate rows of one input file (before deduplication, language and ``repeated``)."""
    from urllib.parse import urljoin

    from .html import _TRACKER_RE, _usable

    path = Path(os.fspath(path))
    report = ExtractReport(out="", inputs=1)
    kind = _kind(path)
    rows: list[dict[str, Any]] = []
    if kind == "html":
        data = gzip.decompress(path.read_bytes()) if path.suffix.lower() == ".gz" else path.read_bytes()
        html = data.decode("utf-8", "replace")
        rows = _rows_of_html(html, _page_url_of_saved(html, settings.base_url), [], settings, report)
    elif kind == "warc":
        for page in html_pages(path):
            rows.extend(_rows_of_html(page.html, page.url, page.x_robots_tag, settings, report))
    elif kind == "wat":
        for wat in wat_pages(path):
            report.pages += 1
            if settings.honour_opt_outs and (
                opted_out(wat.robots_meta, directives=settings.opt_out_directives)
                or opted_out(wat.x_robots_tag, directives=settings.opt_out_directives)
            ):
                report.pages_opted_out += 1
                continue
            base = urljoin(wat.url, wat.base) if wat.base else wat.url
            for link in wat.images:
                report.images += 1
                url = urljoin(base, link["url"].strip()) if base else link["url"].strip()
                if not _usable(url):
                    report.skipped["not_http"] = report.skipped.get("not_http", 0) + 1
                    continue
                if _TRACKER_RE.search(url):
                    report.skipped["tracker"] = report.skipped.get("tracker", 0) + 1
                    continue
                candidates = [(s, " ".join(link[s].split())) for s in ("alt", "title") if link[s].strip()]
                chosen = _choose(candidates, settings.caption_filter, report)
                if chosen is not None:
                    rows.append({"url": url, "caption": chosen[1], "caption_source": chosen[0], "page_url": wat.url})
    elif kind == "table":
        table = read_url_table(path, need_caption=False)
        page_urls = table["page_url"].to_pylist() if "page_url" in table.column_names else None
        for i, (url, caption) in enumerate(zip(table["url"].to_pylist(), table["caption"].to_pylist())):
            report.images += 1
            chosen = _choose([("list", caption)] if caption else [], settings.caption_filter, report)
            if chosen is not None:
                page_url = str(page_urls[i] or "") if page_urls else ""
                rows.append({"url": url, "caption": chosen[1], "caption_source": "list", "page_url": page_url})
    return rows, report


def finish_rows(
    rows: Iterable[dict[str, Any]], settings: ExtractSettings, report: ExtractReport
) -> list[dict[str, Any]]:
    """Drop duplicate (URL, caption) pairs, detect languages, apply the table-wide rules."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        key = (row["url"], row["caption"])
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        unique.append(row)
    rules = settings.caption_filter
    if settings.detect_language or (rules is not None and rules.uses_language):
        from ..captions import LanguageDetector

        detector = rules.detector if rules is not None else LanguageDetector()
        for row in unique:
            row["language"], row["language_score"] = detector.detect(row["caption"])
    else:
        for row in unique:
            row["language"], row["language_score"] = "", 0.0
    if rules is not None and ("repeated" in rules.rules or rules.uses_language):
        languages = [row["language"] if settings.detect_language else None for row in unique]
        decided = rules.apply([r["caption"] for r in unique], [r["url"] for r in unique], languages)
        for rule, n in decided.counts.items():
            if n:
                report.caption_rules[rule] = report.caption_rules.get(rule, 0) + n
        unique = [row for row, keep in zip(unique, decided.keep) if keep]
    for row in unique:
        report.languages[row["language"]] = report.languages.get(row["language"], 0) + 1
    report.languages = dict(sorted(report.languages.items(), key=lambda kv: (-kv[1], kv[0])))
    report.rows = len(unique)
    if rules is not None:
        report.caption_rules = {rule: report.caption_rules.get(rule, 0) for rule in rules.rules}
    return unique


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    types = {
        "url": pa.string(),
        "caption": pa.string(),
        "caption_source": pa.string(),
        "page_url": pa.string(),
        "language": pa.string(),
        "language_score": pa.float32(),
    }
    table = pa.table({name: pa.array([r[name] for r in rows], type) for name, type in types.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(out, table)


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(os.fspath(out)).expanduser()
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"{path}: the output of extract is a Parquet file; name it OUT.parquet")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    return path


def extract(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: ExtractSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractReport:
    """Extract image-caption rows from ``inputs`` into the Parquet table ``out`` (see the module docstring)."""
    settings = settings or ExtractSettings()
    path = check_output(out, overwrite)
    files = [f for f in input_files(inputs) if f.resolve() != path.resolve()]
    started = time.perf_counter()
    report = ExtractReport(out=str(path))
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="file", desc="extracting")
    try:
        for file in files:
            file_rows, file_report = extract_file(file, settings)
            rows.extend(file_rows)
            report.add(file_report)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{report.pages} pages, {len(rows)} images", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    final = finish_rows(rows, settings, report)
    write_rows(path, final)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def extract_summary(report: ExtractReport) -> str:
    lines = [
        f"{report.inputs} files, {report.pages} pages ({report.pages_opted_out} opted out), {report.images} images found",
        "skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()) if v) or "nothing"),
        f"duplicate (URL, caption) pairs dropped: {report.duplicates}",
        "caption rules removed: " + (", ".join(f"{k} {v}" for k, v in report.caption_rules.items() if v) or "nothing"),
        "languages: " + (", ".join(f"{k or '?'} {v}" for k, v in list(report.languages.items())[:8]) or "-"),
        f"wrote {report.rows} rows to {report.out} in {report.seconds:.1f} s",
    ]
    return "\n".join(lines)
