"""Where the service listens and the limits it applies to every request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_text_chars: int = 2_000
    max_batch: int = 256
    max_k: int = 500
    request_timeout_s: float = 30.0
    thumbnail_cache_bytes: int = 64 * 1024 * 1024  # JPEG thumbnails kept in memory, least recently used out
