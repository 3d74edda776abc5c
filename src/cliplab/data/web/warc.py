"""Reading WARC and WAT files (Common Crawl's formats), gzip-compressed or not.

:func:`iter_warc_records` yields each record's headers and payload; a ``.gz`` file is read as the
concatenated gzip members WARC files are (one per record). :func:`html_pages` gives the HTML pages of a
WARC file (``response`` and ``resource`` records, HTTP headers parsed, chunked transfer and gzip/deflate
content encoding undone); :func:`wat_pages` gives the pages of a WAT file as Common Crawl's extractor
saw them: the page URL, its ``<base>``, robots meta tags, ``X-Robots-Tag`` and the ``IMG@/src`` links
with their ``alt`` (and ``title``) text.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["HtmlPage", "WarcRecord", "WatPage", "html_pages", "iter_warc_records", "wat_pages"]

_MAX_HEADER_LINES = 1000


@dataclass
class WarcRecord:
    headers: dict[str, str]  # names lower-cased
    payload: bytes

    @property
    def type(self) -> str:
        return self.headers.get("warc-type", "").lower()

    @property
    def target_uri(self) -> str:
        return self.headers.get("warc-target-uri", "").strip().strip("<>")


def _open(path: str | os.PathLike) -> IO[bytes]:
    handle = open(path, "rb")
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    return handle


def iter_warc_records(path: str | os.PathLike) -> Iterator[WarcRecord]:
    """The records of a WARC (or WAT/WET) file.

    Raises:
        ValueError: the file is not a WARC file (names the byte offset).
    """
    with _open(path) as handle:
        while True:
            line = handle.readline()
            while line in (b"\r\n", b"\n"):
                line = handle.readline()
            if not line:
                return
            if not line.startswith(b"WARC/"):
                raise ValueError(f"{os.fspath(path)}: not a WARC record (line {line[:40]!r})")
            headers: dict[str, str] = {}
            for _ in range(_MAX_HEADER_LINES):
                line = handle.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("utf-8", "replace").partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise ValueError(f"{os.fspath(path)}: a WARC record with a bad Content-Length") from None
            payload = handle.read(length)
            if len(payload) < length:
                return  # a truncated last record
            yield WarcRecord(headers, payload)


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(body[pos:end].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return body  # not chunked after all
        if size == 0:
            break
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


def _decode_content(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower().strip()
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, zlib.error, EOFError):
        return b""
    return body


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'")
    return "utf-8"


@dataclass
class HtmlPage:
    url: str
    html: str
    x_robots_tag: list[str] = field(default_factory=list)


def _split_http(payload: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, sep, body = payload.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = payload.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines()
    try:
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    except (IndexError, ValueError):
        status = 0
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def _is_html(content_type: str, body: bytes) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        return True
    if kind:
        return False
    return body[:512].lstrip().lower().startswith((b"<!doctype html", b"<html"))


def html_pages(path: str | os.PathLike) -> Iterator[HtmlPage]:
    """The HTML pages of a WARC file (HTTP 200 responses and resource records)."""
    for record in iter_warc_records(path):
        if record.type == "response":
            status, headers, body = _split_http(record.payload)
            if status != 200:
                continue
            if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
                body = _dechunk(body)
            encoding = ",".join(headers.get("content-encoding", []))
            if encoding:
                body = _decode_content(body, encoding)
            content_type = ",".join(headers.get("content-type", []))
            robots = headers.get("x-robots-tag", [])
        elif record.type == "resource":
            body, content_type, robots = record.payload, record.headers.get("content-type", ""), []
        else:
            continue
        if not body or not _is_html(content_type, body):
            continue
        charset = _charset(content_type)
        try:
            html = body.decode(charset, "replace")
        except LookupError:
            html = body.decode("utf-8", "replace")
        yield HtmlPage(record.target_uri, html, robots)


@dataclass
class WatPage:
    url: str
    base: str
    robots_meta: list[str]
    x_robots_tag: list[str]
    images: list[dict[str, str]]  # {"url", "alt", "title"}


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def wat_pages(path: str | os.PathLike) -> Iterator[WatPage]:
    """The pages of a WAT file that have image links."""
    for record in iter_warc_records(path):
        if record.type != "metadata":
            continue
        try:
            data = json.loads(record.payload)
        except ValueError:
            continue
        envelope = _get(data, "Envelope") or {}
        response = _get(envelope, "Payload-Metadata", "HTTP-Response-Metadata") or {}
        html = _get(response, "HTML-Metadata") or {}
        links = html.get("Links") if isinstance(html, dict) else None
        if not isinstance(links, list):
            continue
        images = [
            {
                "url": str(link.get("url", "")),
                "alt": str(link.get("alt", "") or ""),
                "title": str(link.get("title", "") or ""),
            }
            for link in links
            if isinstance(link, dict) and link.get("path") == "IMG@/src" and link.get("url")
        ]
        if not images:
            continue
        head = html.get("Head") or {}
        metas = [
            str(m.get("content", ""))
            for m in (head.get("Metas") or [])
            if isinstance(m, dict) and str(m.get("name", "")).lower() == "robots"
        ]
        headers = response.get("Headers") or {}
        robots = (
            [str(v) for k, v in headers.items() if k.lower() == "x-robots-tag"] if isinstance(headers, dict) else []
        )
        url = str(_get(envelope, "WARC-Header-Metadata", "WARC-Target-URI") or "")
        yield WatPage(url, str(head.get("Base") or ""), metas, robots, images)
