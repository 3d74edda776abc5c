"""The search page, the API docs served from local files (no CDN), the icon and the health check."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from ...index.search import Searcher
from ..dependencies import get_searcher, get_settings, is_authorised, require_token
from ..settings import ServeSettings

SWAGGER_ASSETS = "/docs-assets"

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_token)])
health_router = APIRouter(tags=["health"])


@functools.cache
def _page() -> str:
    return resources.files("cliplab.serve").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def index_page() -> str:
    return _page()


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    token = request.query_params.get("token")
    openapi = "/openapi.json" + (f"?token={token}" if token else "")
    return get_swagger_ui_html(
        openapi_url=openapi,
        title="cliplab search: API",
        swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png",
    )


@health_router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(Path(str(swagger_ui_path)) / "favicon-32x32.png", media_type="image/png")


@health_router.get("/api/health")
def health(
    request: Request, settings: ServeSettings = Depends(get_settings), searcher: Searcher = Depends(get_searcher)
) -> dict:
    """Liveness, open to all; the store's figures only for authorised clients."""
    if not is_authorised(request, settings):
        return {"status": "ok"}
    return {"status": "ok", **searcher.store.stats()}
