"""A real HTTP/1.1 server on loopback addresses for the download tests and benchmark.

It listens on one port of several 127.x.y.z addresses (each acts as its own host) and never on any
other address. Each (host, path) answers with a :class:`Resource` (or a sequence of them, one per
request, the last repeated): a status, headers, a body sent whole, chunked, gzip-encoded, trickled a
few bytes at a time, cut short, or after a delay. The server counts requests per (host, path) with
their times, and the most connections and requests open at once per host.

Used as ``with WebSite(["127.0.0.1", "127.0.0.2"]) as site: site.add(...); site.url(...)``; the
server runs on its own event loop in a background thread and stops with the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

LOOPBACK_PREFIX = "127."


@dataclass
class Resource:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False  # Content-Encoding: gzip
    chunked: bool = False  # Transfer-Encoding: chunked (no Content-Length)
    trickle: tuple[int, float] | None = None  # (bytes, seconds): send that many bytes per pause
    delay: float = 0.0  # before the status line
    cut_after: int | None = None  # declare the full length, send this many body bytes, then close
    extra_headers: Sequence[tuple[str, str]] = ()  # repeated headers (X-Robots-Tag twice, ...)


class WebSite:
    """The server. ``latency`` is added before every response (the benchmark's network)."""

    def __init__(
        self,
        hosts: Sequence[str] = ("127.0.0.1",),
        latency: float = 0.0,
        resolver: Callable[[str, str], Resource | None] | None = None,
    ) -> None:
        for host in hosts:
            if not host.startswith(LOOPBACK_PREFIX):
                raise ValueError(f"the test site serves loopback addresses only, not {host!r}")
        self.hosts = list(hosts)
        self.latency = latency
        self.resolver = resolver
        self.routes: dict[tuple[str, str], list[Resource]] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.user_agents: set[str] = set()
        self.max_connections: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.connections_opened: Counter[str] = Counter()
        self._readers: dict[str, set[asyncio.StreamReader]] = {}
        self._in_flight: Counter[str] = Counter()
        self._gzip_cache: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ set-up

    def add(self, host: str, path: str, *resources: Resource) -> str:
        """Serve ``resources`` (one per request, the last repeated) at ``http://host:port/path``."""
        if host not in self.hosts:
            raise ValueError(f"{host} is not one of the site's hosts {self.hosts}")
        self.routes[(host, path)] = list(resources)
        return self.url(host, path)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def count(self, url_or_path: str, host: str | None = None) -> int:
        """Requests received for a URL (or a host and path)."""
        host, path = self._split(url_or_path, host)
        return self.requests[(host, path)]

    def times(self, url_or_path: str, host: str | None = None) -> list[float]:
        host, path = self._split(url_or_path, host)
        return self.request_times[(host, path)]

    def _split(self, url_or_path: str, host: str | None) -> tuple[str, str]:
        if url_or_path.startswith("http://"):
            rest = url_or_path[len("http://") :]
            netloc, _, path = rest.partition("/")
            return netloc.split(":")[0], "/" + path
        return host or self.hosts[0], url_or_path

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_times.clear()
            self.max_connections.clear()
            self.max_in_flight.clear()
            self.connections_opened.clear()

    # ------------------------------------------------------------------ serving

    def _resource(self, host: str, path: str) -> Resource | None:
        with self._lock:
            n = self.requests[(host, path)]
            self.requests[(host, path)] += 1
            self.request_times[(host, path)].append(time.monotonic())
        sequence = self.routes.get((host, path))
        if sequence:
            return sequence[min(n, len(sequence) - 1)]
        if self.resolver is not None:
            return self.resolver(host, path)
        return None

    async def _send(self, writer: asyncio.StreamWriter, resource: Resource, head_only: bool) -> bool:
        """Write one response; return whether the connection stays open."""
        if resource.delay:
            await asyncio.sleep(resource.delay)
        body = resource.body
        headers = {"Server": "cliplab-test-site"}
        if resource.content_type:
            headers["Content-Type"] = resource.content_type
        if resource.gzip:
            key = id(resource.body)
            if key not in self._gzip_cache:
                self._gzip_cache[key] = gzip.compress(resource.body, compresslevel=6, mtime=0)
            body = self._gzip_cache[key]
            headers["Content-Encoding"] = "gzip"
        if resource.chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(len(body))
        headers.update(resource.headers)
        reason = {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found"}.get(resource.status, "Status")
        lines = [f"HTTP/1.1 {resource.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"{k}: {v}" for k, v in resource.extra_headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if head_only:
            await writer.drain()
            return True
        if resource.cut_after is not None:
            writer.write(body[: resource.cut_after])
            await writer.drain()
            writer.transport.abort()
            return False
        if resource.trickle is not None:
            size, pause = resource.trickle
            for start in range(0, len(body), size):
                piece = body[start : start + size]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if resource.chunked else piece)
                await writer.drain()
                await asyncio.sleep(pause)
            if resource.chunked:
                writer.write(b"0\r\n\r\n")
        elif resource.chunked:
            step = 1 << 16
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(body)
        await writer.drain()
        return True

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("sockname")[0]
        readers = self._readers.setdefault(host, set())
        readers.add(reader)
        # Connections open at once, as the client holds them: a connection the client has closed (its
        # EOF or reset has arrived) no longer counts, even while this server is still busy writing to
        # it. A few milliseconds let the closes that reached the kernel before this connect be read.
        await asyncio.sleep(0.005)
        open_now = sum(1 for r in readers if not (r.at_eof() or r.exception() is not None))
        with self._lock:
            self.connections_opened[host] += 1
            self.max_connections[host] = max(self.max_connections[host], open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    return
                method, target, _ = parts
                request_headers = {}
                for line in header_lines:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        request_headers[name.strip().lower()] = value.strip()
                self.user_agents.add(request_headers.get("user-agent", ""))
                path = target.split("?", 1)[0] if not target.startswith("/__") else target
                with self._lock:
                    self._in_flight[host] += 1
                    self.max_in_flight[host] = max(self.max_in_flight[host], self._in_flight[host])
                try:
                    if self.latency:
                        await asyncio.sleep(self.latency)
                    resource = self._resource(host, target if "?" in target and (host, target) in self.routes else path)
                    if resource is None:
                        resource = Resource(404, b"not found", "text/plain")
                    keep = await self._send(writer, resource, method == "HEAD")
                finally:
                    with self._lock:
                        self._in_flight[host] -= 1
                if not keep or request_headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            readers.discard(reader)
            with contextlib.suppress(Exception):
                writer.close()

    def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve_connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _main(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        for host in self.hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.port))
            self.port = sock.getsockname()[1]
            sock.listen(1024)
            self._servers.append(await asyncio.start_server(self._handle, sock=sock, limit=1 << 16))
        ready.set()
        await self._stopped.wait()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self) -> WebSite:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._main(ready))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="web-site", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (for a server process of its own)."""
        asyncio.run(self._main(threading.Event()))

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> WebSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def photo_jpeg(width: int, height: int, seed: int, quality: int = 88, exif_orientation: int | None = None) -> bytes:
    """A photo-like JPEG: smooth colour fields at several scales plus fine grain, so it compresses
    like a photograph (about 0.8-1.5 bits per pixel at quality 88), not like a flat test card."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 90.0), (12, 40.0), (48, 18.0)):
        grid = rng.uniform(-1, 1, (cells, max(2, cells * width // max(height, 1)), 3)).astype(np.float32)
        layer = Image.fromarray(((grid + 1) * 127.5).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
        image += (np.asarray(layer, np.float32) / 127.5 - 1) * weight
    image += rng.normal(0, 6, (height, width, 1)).astype(np.float32)  # luminance grain
    pixels = np.clip(image + 128, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    picture = Image.fromarray(pixels)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        picture.save(out, "JPEG", quality=quality, exif=exif)
    else:
        picture.save(out, "JPEG", quality=quality)
    return out.getvalue()
