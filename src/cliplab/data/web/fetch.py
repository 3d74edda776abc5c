"""Fetching one image URL politely and safely, with asyncio and aiohttp.

Why aiohttp: one event loop keeps thousands of connections open on one core, its ``TCPConnector``
has the global and per-host connection limits and the DNS cache built in (and hands a free connection
to a waiter of any host that is under its limit, so one busy host does not block the others), and its
``ClientTimeout`` has connect, read-gap and total limits. img2dataset's thread-per-request urllib has
none of these.

:class:`Fetcher` answers :class:`FetchOutcome`: ``status`` is ``"ok"`` or a failure class of
:data:`FAILURE_CLASSES`. Per request:

* robots.txt is fetched once per origin (scheme, host, port), shared by every request for it, and
  checked for the URL and for every redirect target; a missing one (4xx) allows all, an unreachable
  one (5xx, errors) disallows all (RFC 9309);
* redirects are followed by hand, across hosts too, at most ``max_redirects``; a loop stops at the
  first repeated URL;
* ``X-Robots-Tag`` opt-outs (``noai``, ``noimageai``, ..., unscoped or scoped to ``cliplab``) end the
  request before its body is read, as do an image format that the first bytes do not show (an HTML
  page is read on, up to 64 KiB, for robots meta tags) and a ``Content-Length`` over the cap; a body
  that grows past the cap while streaming (chunked, or decompressed from gzip) is cut there;
* only transient failures (:data:`TRANSIENT`: timeouts, resets, 5xx, 429) are retried, with
  exponential backoff and jitter; a ``Retry-After`` (seconds or an HTTP date) is honoured and holds
  back every request to that host until then; 4xx, opt-outs, robots.txt and bad content never are.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..._version import __version__
from .robots import OPT_OUT_DIRECTIVES, USER_AGENT_TOKEN, RobotsRules, meta_robots_directives, opted_out, robots_url
from .sniff import looks_like_html, sniff_format
from .status import FAILURE_CLASSES, PERMANENT, TRANSIENT

__all__ = [
    "FAILURE_CLASSES",
    "PERMANENT",
    "TRANSIENT",
    "USER_AGENT",
    "FetchOutcome",
    "FetchSettings",
    "Fetcher",
]

#: Identifies cliplab and says how to opt out (robots.txt group or X-Robots-Tag, named by the token).
USER_AGENT = (
    f"Mozilla/5.0 (compatible; {USER_AGENT_TOKEN}/{__version__}; image-caption dataset builder; "
    f'opt out: robots.txt "User-agent: {USER_AGENT_TOKEN}" or "X-Robots-Tag: noai")'
)

_REDIRECTS = (301, 302, 303, 307, 308)
_SNIFF_BYTES = 16
_HTML_META_BYTES = 64 * 1024


@dataclass(frozen=True)
class FetchSettings:
    """Connection limits, timeouts, politeness and safety for downloading (the CLI's options)."""

    concurrency: int = 256  # connections in all
    per_host: int = 16  # connections to one host (scheme, host, port)
    connect_timeout: float = 10.0
    read_timeout: float = 10.0  # the longest gap between two reads
    total_timeout: float = 30.0  # one request, from connect to the body's last byte
    max_redirects: int = 5
    max_bytes: int = 16 * 1024 * 1024  # body size cap (after content decoding)
    retries: int = 2  # extra attempts after a transient failure
    backoff: float = 1.0  # seconds before the first retry; doubles each time, with jitter
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the URL fails as 429/5xx
    robots_txt: bool = True
    opt_out_directives: frozenset[str] = OPT_OUT_DIRECTIVES
    user_agent: str = USER_AGENT
    agent_token: str = USER_AGENT_TOKEN
    dns_cache_seconds: int = 300

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host < 1:
            raise ValueError("concurrency and per_host must be >= 1")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        if self.max_redirects < 0 or self.retries < 0 or self.max_bytes < 1:
            raise ValueError("max_redirects and retries must be >= 0, max_bytes >= 1")


@dataclass
class FetchOutcome:
    status: str  # "ok" or a key of FAILURE_CLASSES
    body: bytes | None = None
    http_status: int | None = None
    final_url: str = ""
    error: str = ""
    attempts: int = 0  # requests sent for this URL (robots.txt not counted)
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        return False


@dataclass
class FetchCounters:
    """Requests the fetcher sent, for the stats."""

    requests: int = 0
    robots_requests: int = 0
    bytes: int = 0
    retries: int = 0
    by_host: dict[str, int] = field(default_factory=dict)


class Fetcher:
    """Fetches URLs on one event loop with one connection pool (use as ``async with``)."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self.counters = FetchCounters()
        self._robots: dict[str, asyncio.Future[tuple[RobotsRules, str, str]]] = {}
        self._not_before: dict[str, float] = {}
        self._session: Any = None
        self._rng = random.Random()

    async def __aenter__(self) -> Fetcher:
        from ...extras import require

        aiohttp = require("aiohttp", "data", "cliplab data download")
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency,
            limit_per_host=s.per_host,
            use_dns_cache=True,
            ttl_dns_cache=s.dns_cache_seconds,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=s.total_timeout, sock_connect=s.connect_timeout, connect=None, sock_read=s.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": s.user_agent, "Accept": "image/*,*/*;q=0.5"},
            auto_decompress=True,
            raise_for_status=False,
            trust_env=False,
            read_bufsize=2**16,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._robots.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ robots.txt

    async def _load_robots(self, url: str) -> tuple[RobotsRules, str, str]:
        """The rules of ``url``'s origin and, when unreachable, the failure class and why.

        A host that refuses the connection or does not resolve fails its URLs as ``connect`` / ``dns``
        (nothing more is sent to it); a robots.txt answered with 5xx or 429, or timing out, disallows
        everything (``robots_unavailable``, RFC 9309 2.3.1.4)."""
        self.counters.robots_requests += 1
        try:
            async with self._session.get(
                robots_url(url), allow_redirects=True, max_redirects=self.settings.max_redirects
            ) as response:
                if response.status >= 500 or response.status == 429:
                    return (
                        RobotsRules.disallow_all(),
                        "robots_unavailable",
                        f"robots.txt answered HTTP {response.status}",
                    )
                if response.status >= 300:  # 4xx: no robots.txt, all allowed; 3xx: a chain over the limit
                    return RobotsRules.allow_all(), "", ""
                data = await response.content.read(512 * 1024)
                return RobotsRules.parse(data.decode("utf-8", "replace"), self.settings.agent_token), "", ""
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            klass, message = self._classify(exc)
            if klass not in ("connect", "dns", "invalid_url"):
                klass, message = "robots_unavailable", f"robots.txt unreachable: {message}"
            return RobotsRules.disallow_all(), klass, message

    async def _robots_verdict(self, url: str) -> FetchOutcome | None:
        if not self.settings.robots_txt:
            return None
        origin = _origin(url)
        task = self._robots.get(origin)
        if task is None:
            task = asyncio.ensure_future(self._load_robots(url))
            self._robots[origin] = task
        rules, klass, problem = await asyncio.shield(task)
        if rules.allows(url):
            return None
        if klass:
            return FetchOutcome(klass, final_url=url, error=problem)
        return FetchOutcome("robots", final_url=url, error=f"robots.txt of {origin} disallows {urlsplit(url).path}")

    # ------------------------------------------------------------------ one request chain

    async def _wait_for_host(self, origin: str) -> None:
        while True:
            delay = self._not_before.get(origin, 0.0) - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        import aiohttp

        message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError)):
            return "timeout", message
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return "dns", message
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "connect", message
        if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError)):
            return "invalid_url", message
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
            return "reset", message
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return "connect", message
        return "error", message

    async def _read_body(self, response: Any, url: str) -> FetchOutcome:
        s = self.settings
        length = response.content_length
        if length is not None and length > s.max_bytes and "Content-Encoding" not in response.headers:
            return FetchOutcome(
                "too_large",
                http_status=response.status,
                final_url=url,
                error=f"Content-Length {length} > cap {s.max_bytes}",
            )
        chunks: list[bytes] = []
        size = 0
        checked = False
        limit = s.max_bytes
        async for chunk in response.content.iter_chunked(2**16):
            chunks.append(chunk)
            size += len(chunk)
            if not checked and size >= _SNIFF_BYTES:
                checked = True
                head = b"".join(chunks)[:_SNIFF_BYTES]
                if sniff_format(head) is None:
                    limit = min(limit, _HTML_META_BYTES)  # read a page's head for its meta tags, no more
            if size > limit:
                break
        body = b"".join(chunks)
        self.counters.bytes += size
        if sniff_format(body[:_SNIFF_BYTES]) is None:
            if looks_like_html(body):
                directive = opted_out(
                    meta_robots_directives(body[:_HTML_META_BYTES].decode("utf-8", "replace"), s.agent_token),
                    s.agent_token,
                    s.opt_out_directives,
                )
                if directive:
                    return FetchOutcome(
                        "opt_out", http_status=response.status, final_url=url, error=f"robots meta tag: {directive}"
                    )
            what = "an HTML page" if looks_like_html(body) else f"not an image (starts {body[:8]!r})"
            return FetchOutcome("not_image", http_status=response.status, final_url=url, error=what)
        if size > s.max_bytes:
            return FetchOutcome(
                "too_large",
                http_status=response.status,
                final_url=url,
                error=f"body over the cap of {s.max_bytes} bytes",
            )
        if length is not None and "Content-Encoding" not in response.headers and size < length:
            return FetchOutcome(
                "reset", http_status=response.status, final_url=url, error=f"body ended at {size} of {length} bytes"
            )
        return FetchOutcome("ok", body=body, http_status=response.status, final_url=url)

    async def _fetch_chain(self, url: str) -> FetchOutcome:
        """One attempt: the request and its redirects. ``attempts`` counts the requests sent."""
        s = self.settings
        seen = {url}
        current = url
        sent = 0
        for hop in range(s.max_redirects + 1):
            verdict = await self._robots_verdict(current)
            if verdict is not None:
                verdict.attempts = sent
                return verdict
            origin = _origin(current)
            await self._wait_for_host(origin)
            sent += 1
            self.counters.requests += 1
            self.counters.by_host[origin] = self.counters.by_host.get(origin, 0) + 1
            try:
                async with self._session.get(current, allow_redirects=False) as response:
                    status = response.status
                    if status in _REDIRECTS and "Location" in response.headers:
                        target = urljoin(current, response.headers["Location"])
                        if not valid_url(target):
                            return FetchOutcome(
                                "invalid_url",
                                http_status=status,
                                final_url=target,
                                error="redirect to a non-http(s) URL",
                                attempts=sent,
                            )
                        if target in seen:
                            return FetchOutcome(
                                "redirects",
                                http_status=status,
                                final_url=target,
                                error=f"redirect loop back to {target}",
                                attempts=sent,
                            )
                        if hop == s.max_redirects:
                            return FetchOutcome(
                                "redirects",
                                http_status=status,
                                final_url=target,
                                error=f"more than {s.max_redirects} redirects",
                                attempts=sent,
                            )
                        seen.add(target)
                        current = target
                        continue
                    if status == 429 or status == 503:
                        wait = parse_retry_after(response.headers.get("Retry-After"))
                        if wait is not None:
                            self._not_before[origin] = max(
                                self._not_before.get(origin, 0.0), time.monotonic() + min(wait, s.max_retry_after)
                            )
                        klass = "429" if status == 429 else "5xx"
                        return FetchOutcome(
                            klass,
                            http_status=status,
                            final_url=current,
                            error=f"HTTP {status}",
                            attempts=sent,
                            retry_after=wait,
                        )
                    if status >= 500:
                        return FetchOutcome(
                            "5xx", http_status=status, final_url=current, error=f"HTTP {status}", attempts=sent
                        )
                    if status >= 400:
                        return FetchOutcome(
                            "4xx", http_status=status, final_url=current, error=f"HTTP {status}", attempts=sent
                        )
                    if status >= 300 or status < 200:
                        return FetchOutcome(
                            "4xx",
                            http_status=status,
                            final_url=current,
                            error=f"HTTP {status} without a usable Location",
                            attempts=sent,
                        )
                    directive = opted_out(
                        response.headers.getall("X-Robots-Tag", []), s.agent_token, s.opt_out_directives
                    )
                    if directive:
                        return FetchOutcome(
                            "opt_out",
                            http_status=status,
                            final_url=current,
                            error=f"X-Robots-Tag: {directive}",
                            attempts=sent,
                        )
                    outcome = await self._read_body(response, current)
                    outcome.attempts = sent
                    return outcome
            except Exception as exc:  # aiohttp's and the socket's errors, classified
                if isinstance(exc, asyncio.CancelledError):
                    raise
                status_class, message = self._classify(exc)
                return FetchOutcome(status_class, final_url=current, error=message, attempts=sent)
        raise AssertionError("unreachable")  # the loop returns on its last hop

    async def fetch(self, url: str) -> FetchOutcome:
        """Fetch ``url``: robots.txt, redirects, retries of transient failures, the size cap."""
        if not valid_url(url):
            return FetchOutcome("invalid_url", final_url=url, error="not an http(s) URL with a host")
        s = self.settings
        attempts = 0
        attempt = 0
        while True:
            outcome = await self._fetch_chain(url)
            attempts += outcome.attempts
            if outcome.status not in TRANSIENT or attempt >= s.retries:
                break
            if outcome.retry_after is not None:
                if outcome.retry_after > s.max_retry_after:
                    outcome.error += (
                        f" (Retry-After {outcome.retry_after:.0f} s is over the {s.max_retry_after:.0f} s wait limit)"
                    )
                    break
                delay = outcome.retry_after  # the host's hold is already set; this lines the URL up behind it
            else:
                delay = s.backoff * (2**attempt) * (0.5 + self._rng.random())
            attempt += 1
            self.counters.retries += 1
            await asyncio.sleep(delay)
        outcome.attempts = attempts
        return outcome
