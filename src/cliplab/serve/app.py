"""The HTTP service over a store: JSON endpoints (OpenAPI docs at ``/docs``) and the search page at ``/``.

Limits protect the process from clients: upload bytes, image pixels, text length, batch size, and a
deadline per request. With a token set, every endpoint but ``/api/health`` requires it. Thumbnails
are looked up by stored item id, so only files in the store can ever be read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .._version import __version__
from ..index.search import Searcher
from .dependencies import is_authorised
from .routes import encode, items, pages, search
from .settings import ServeSettings
from .thumbnails import ThumbnailCache


def create_app(
    pipeline, store_dir: str, settings: ServeSettings | None = None, on_startup: Callable[[], None] | None = None
) -> FastAPI:
    """The FastAPI application serving ``store_dir`` with ``pipeline`` (the store's model);
    ``on_startup`` runs once the server is ready."""
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if on_startup is not None:
            on_startup()
        yield

    app = FastAPI(
        title="cliplab search",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        description="Search a cliplab store by text, by image and by stored item; classify; embed.",
    )
    # The schema declares OpenAPI 3.0: the Swagger UI served offline (swagger-ui-bundle, 4.x) reads 3.0 only.
    app.openapi_version = "3.0.3"
    app.state.settings = settings
    app.state.searcher = Searcher(pipeline, store_dir)
    app.state.thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)

    @app.middleware("http")
    async def limits(request: Request, call_next):
        # The schema and the docs' assets carry no data, but are guarded like the rest when a token is set.
        if request.url.path.startswith(("/openapi.json", pages.SWAGGER_ASSETS)) and not is_authorised(
            request, settings
        ):
            return JSONResponse({"detail": "missing or wrong API token"}, status_code=401)
        # Refuse oversized bodies before they are read (uploads are spooled to disk by the parser).
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_upload_bytes + 64 * 1024):
            return JSONResponse(
                {"detail": f"request body larger than {settings.max_upload_bytes} bytes"}, status_code=413
            )
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            return JSONResponse(
                {"detail": "send a Content-Length header (chunked bodies are not accepted)"}, status_code=411
            )
        try:
            return await asyncio.wait_for(call_next(request), timeout=settings.request_timeout_s)
        except TimeoutError:
            return JSONResponse(
                {"detail": f"request took longer than {settings.request_timeout_s:g} s"}, status_code=504
            )

    for router in (search.router, items.router, encode.router, pages.router, pages.health_router):
        app.include_router(router)
    app.mount(pages.SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    return app


def run_server(pipeline, store_dir: str, settings: ServeSettings) -> None:
    """Serve until interrupted (uvicorn); the address is printed once the server listens."""
    import uvicorn

    def announce() -> None:
        print(f"cliplab serve: http://{settings.host}:{settings.port}/  (API docs at /docs)", flush=True)

    app = create_app(pipeline, store_dir, settings, on_startup=announce)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
