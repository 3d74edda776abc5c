"""The outcome classes of a downloaded URL: ``ok`` or one failure class, and which are transient."""

from __future__ import annotations

__all__ = ["FAILURE_CLASSES", "PERMANENT", "TRANSIENT"]

#: Every failure class a URL can end in, with what it means.
FAILURE_CLASSES: dict[str, str] = {
    "invalid_url": "not an http(s) URL with a host",
    "robots": "robots.txt disallows the URL (or a redirect target) for cliplab",
    "robots_unavailable": "robots.txt answered 5xx or 429, or timed out: everything is disallowed",
    "opt_out": "X-Robots-Tag or a robots meta tag opts out (noai, noimageai, noindex, noimageindex)",
    "dns": "the host name does not resolve",
    "connect": "the connection was refused or failed",
    "timeout": "a connect, read or total timeout",
    "reset": "the connection broke mid-response",
    "429": "too many requests (after Retry-After and the retries)",
    "5xx": "server error (after the retries)",
    "4xx": "client error (404, 403, 410, ...)",
    "redirects": "a redirect loop or more than max_redirects redirects",
    "too_large": "the body is over the size cap (Content-Length or streamed)",
    "not_image": "the bytes are not an image (HTML served as .jpg, text, ...)",
    "decode": "a truncated or corrupt image",
    "bomb": "the image declares more pixels than the limit (a decompression bomb)",
    "error": "an unexpected error (reported with its message)",
}
#: Failures worth retrying within a run (and by ``--retry-failed`` later).
TRANSIENT: frozenset[str] = frozenset({"timeout", "reset", "5xx", "429"})
#: Failures never requested again, whatever the settings.
PERMANENT: frozenset[str] = frozenset(set(FAILURE_CLASSES) - TRANSIENT - {"error"})
