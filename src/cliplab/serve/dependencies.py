"""What the routes get injected with: the settings, the searcher (refreshed with the store's latest
commits), the API-token check, and validated inputs (texts, query options, uploaded images)."""

from __future__ import annotations

import hmac
import io

from fastapi import Depends, HTTPException, Request, UploadFile
from PIL import Image

from ..images import ImageLoadError, load_image
from ..index.search import TARGETS, Searcher
from .settings import ServeSettings
from .thumbnails import ThumbnailCache


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_searcher(request: Request) -> Searcher:
    """The store's searcher, synced with every item committed since the last request."""
    searcher: Searcher = request.app.state.searcher
    searcher.refresh()
    return searcher


def get_thumbnails(request: Request) -> ThumbnailCache:
    return request.app.state.thumbnails


def is_authorised(request: Request, settings: ServeSettings) -> bool:
    """No token configured, or the request carries it (``Authorization: Bearer`` or ``?token=``)."""
    if not settings.token:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), settings.token.encode())


def require_token(request: Request, settings: ServeSettings = Depends(get_settings)) -> None:
    if not is_authorised(request, settings):
        raise HTTPException(401, "missing or wrong API token")


def check_query(k: int, target: str, settings: ServeSettings) -> None:
    if not 1 <= k <= settings.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.max_k}")
    if target not in TARGETS:
        raise HTTPException(422, f"target must be one of {', '.join(TARGETS)}")


def check_text(text: str, settings: ServeSettings) -> str:
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be echoed as JSON
    if len(text) > settings.max_text_chars:
        raise HTTPException(413, f"text of {len(text)} characters; the limit is {settings.max_text_chars}")
    if not text.strip():
        raise HTTPException(422, "the text is empty")
    return text


async def read_image(upload: UploadFile, settings: ServeSettings) -> Image.Image:
    """An uploaded image, decoded only after its size and declared pixel count pass the limits."""
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:
        raise HTTPException(422, f"{upload.filename or 'upload'} is not an image cliplab can read") from None
    if width * height > settings.max_image_pixels:
        raise HTTPException(413, f"image of {width}x{height} pixels; the limit is {settings.max_image_pixels}")
    try:
        return load_image(data)
    except ImageLoadError as error:
        raise HTTPException(
            422, str(error).replace(f"<{len(data)} bytes>", repr(upload.filename or "upload"))
        ) from None
