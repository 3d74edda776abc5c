"""What a body is, from its first bytes: the image formats' magic numbers, and HTML pages."""

from __future__ import annotations

__all__ = ["looks_like_html", "sniff_format"]


def sniff_format(head: bytes) -> str | None:
    """The image format of encoded bytes from their first bytes (magic numbers), or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 14:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def looks_like_html(head: bytes) -> bool:
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<meta", b"<body", b"<!--", b"<?xml"))
