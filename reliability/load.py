"""A bounded load test of ``cliplab serve`` on the loopback interface.

Concurrent clients send a mix of text searches and image-upload searches for a fixed time, while the
server's resident memory is sampled. Reports requests/s, latency p50/p99, errors and memory.
"""

from __future__ import annotations

import io
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

WORDS = ["dog", "cat", "red", "car", "tree", "snow", "running", "two", "a photo of", "blue", "house", "sky"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _png(rng: random.Random) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (rng.randint(40, 400), rng.randint(40, 300)), tuple(rng.randint(0, 255) for _ in range(3))).save(
        out, format="PNG"
    )
    return out.getvalue()


def start_server(store: Path, model: str, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cliplab", "serve", str(store), "--port", str(port), "--model", model, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(f"cliplab serve exited: {process.stderr.read().decode()[-2000:]}")
    process.kill()
    raise RuntimeError("cliplab serve did not start within 120 s")


def run_load(
    url: str, pid: int, clients: int = 8, seconds: float = 30.0, image_share: float = 0.3, seed: int = 0
) -> dict:
    """``clients`` threads send requests for ``seconds``; returns the figures."""
    stop = time.time() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(seed + index)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.time() < stop:
                start = time.perf_counter()
                try:
                    if rng.random() < image_share:
                        response = http.post(
                            "/api/search/image", files={"file": ("q.png", _png(rng))}, data={"k": "10"}
                        )
                    else:
                        query = " ".join(rng.sample(WORDS, 3))
                        response = http.get("/api/search", params={"q": query, "k": 10})
                    ok = response.status_code == 200 and "hits" in response.json()
                    problem = None if ok else f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    memory = [_rss_mb(pid)]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        memory.append(_rss_mb(pid))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    third = max(1, len(memory) // 3)
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
        "rss_mb_start": round(memory[0], 1),
        "rss_mb_end": round(memory[-1], 1),
        "rss_mb_max": round(max(memory), 1),
        "rss_growth_last_two_thirds_mb": round(memory[-1] - memory[third], 1),
    }
