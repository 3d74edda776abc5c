"""The HTTP service over a store: JSON endpoints (OpenAPI docs at ``/docs``) and the search page at ``/``.

Limits protect the process from clients: upload bytes, image pixels, text length, batch size, and a
deadline per request. With a token set, every endpoint but ``/api/health`` requires it. Thumbnails
are looked up by stored item id, so only files in the store can ever be read.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from ..index.contact_sheet import thumbnail_jpeg
from ..index.search import TARGETS, Hit, Searcher
from ..preprocess import ImageLoadError, load_image


@dataclass(frozen=True)
class ServeSettings:
    """Where to listen and the limits applied to every request."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_text_chars: int = 2_000
    max_batch: int = 256
    max_k: int = 500
    request_timeout_s: float = 30.0


class SearchRequest(BaseModel):
    q: str = Field(..., description="the text query")
    k: int = 20
    target: str = "image"


class EmbedTextsRequest(BaseModel):
    texts: list[str] = Field(..., description="texts to embed")


class ClassifyResult(BaseModel):
    label: str
    probability: float


def _hit_json(hit: Hit) -> dict:
    item = hit.item
    result = {"rank": hit.rank, "score": round(hit.score, 6), "id": item.id, "kind": item.kind}
    if item.kind == "image":
        result["name"] = Path(item.path).name
        result["thumbnail"] = f"/api/thumbnail/{item.id}"
    else:
        result["text"] = item.caption
    return result


def create_app(pipeline, store_dir: str, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``store_dir`` with ``pipeline`` (the store's model)."""
    settings = settings or ServeSettings()
    searcher = Searcher(pipeline, store_dir)
    thumbnails: dict[int, bytes] = {}
    thumbnails_lock = threading.Lock()
    app = FastAPI(title="cliplab search", version="1",
                  description="Search a cliplab store by text, by image and by stored item; classify; embed.")
    app.state.searcher = searcher

    def authorised(request: Request) -> bool:
        if not settings.token:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), settings.token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path != "/api/health" and not authorised(request):
            return JSONResponse({"detail": "missing or wrong API token"}, status_code=401)
        # Refuse oversized bodies before they are read (uploads are spooled to disk by the parser).
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_upload_bytes + 64 * 1024):
            return JSONResponse({"detail": f"request body larger than {settings.max_upload_bytes} bytes"},
                                status_code=413)
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            return JSONResponse({"detail": "send a Content-Length header (chunked bodies are not accepted)"},
                                status_code=411)
        try:
            return await asyncio.wait_for(call_next(request), timeout=settings.request_timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse({"detail": f"request took longer than {settings.request_timeout_s:g} s"},
                                status_code=504)

    def check_query(k: int, target: str) -> None:
        if not 1 <= k <= settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.max_k}")
        if target not in TARGETS:
            raise HTTPException(422, f"target must be one of {', '.join(TARGETS)}")

    def check_text(text: str) -> str:
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be echoed as JSON
        if len(text) > settings.max_text_chars:
            raise HTTPException(413, f"text of {len(text)} characters; the limit is {settings.max_text_chars}")
        if not text.strip():
            raise HTTPException(422, "the text is empty")
        return text

    async def read_image(upload: UploadFile) -> Image.Image:
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
        except Exception:  # noqa: BLE001 - any failure to identify is the client's bad input
            raise HTTPException(422, f"{upload.filename or 'upload'} is not an image cliplab can read") from None
        if width * height > settings.max_image_pixels:
            raise HTTPException(413, f"image of {width}x{height} pixels; the limit is {settings.max_image_pixels}")
        try:
            return load_image(data)
        except ImageLoadError as error:
            raise HTTPException(422, str(error).replace(f"<{len(data)} bytes>", repr(upload.filename or "upload"))
                                ) from None

    def refreshed() -> Searcher:
        searcher.refresh()
        return searcher

    @app.get("/api/health")
    def health(request: Request) -> dict:
        """Liveness, open to all; the store's figures only for authorised clients."""
        if not authorised(request):
            return {"status": "ok"}
        return {"status": "ok", **refreshed().store.stats()}

    @app.get("/api/search")
    def search_text(q: str = Query(..., description="the text query"), k: int = 20, target: str = "image") -> dict:
        check_query(k, target)
        q = check_text(q)
        hits = refreshed().text(q, k, target)
        return {"query": q, "target": target, "hits": [_hit_json(h) for h in hits]}

    @app.post("/api/search")
    def search_text_post(body: SearchRequest) -> dict:
        """The same as ``GET /api/search``, for long queries and scripts."""
        return search_text(body.q, body.k, body.target)

    @app.post("/api/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Form(20), target: str = Form("image")) -> dict:
        check_query(k, target)
        image = await read_image(file)
        hits = await asyncio.to_thread(lambda: refreshed().image(image, k, target))
        return {"query": file.filename, "target": target, "hits": [_hit_json(h) for h in hits]}

    @app.get("/api/search/item/{item_id}")
    def search_item(item_id: int, k: int = 20, target: str = "image") -> dict:
        check_query(k, target)
        try:
            hits = refreshed().item(item_id, k, target)
        except KeyError:
            raise HTTPException(404, f"no item with id {item_id}") from None
        return {"query": item_id, "target": target, "hits": [_hit_json(h) for h in hits]}

    @app.get("/api/item/{item_id}")
    def item(item_id: int) -> dict:
        found = refreshed().store.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return _hit_json(Hit(0, 1.0, found))

    @app.get("/api/thumbnail/{item_id}", responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: int) -> Response:
        with thumbnails_lock:
            cached = thumbnails.get(item_id)
        if cached is None:
            found = refreshed().store.item(item_id)
            if found is None or found.kind != "image":
                raise HTTPException(404, f"no image with id {item_id} in the store")
            cached = thumbnail_jpeg(found.path)
            if cached is None:
                raise HTTPException(410, f"the file of item {item_id} can no longer be read")
            with thumbnails_lock:
                if len(thumbnails) > 10_000:
                    thumbnails.clear()
                thumbnails[item_id] = cached
        return Response(cached, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/classify")
    async def classify(file: UploadFile = File(...), labels: str = Form(..., description="comma-separated labels"),
                       k: int = Form(5)) -> list[ClassifyResult]:
        from ..zeroshot import ZeroShotClassifier

        names = [check_text(s.strip()) for s in labels.split(",") if s.strip()]
        if not 1 <= len(names) <= settings.max_batch:
            raise HTTPException(422, f"give between 1 and {settings.max_batch} comma-separated labels")
        image = await read_image(file)

        def run() -> list[ClassifyResult]:
            classifier = ZeroShotClassifier.from_labels(pipeline, names)
            predictions = classifier.classify(pipeline, [image], top_k=min(max(k, 1), len(names)))[0]
            return [ClassifyResult(label=p.label, probability=p.probability) for p in predictions]

        return await asyncio.to_thread(run)

    @app.post("/api/embed/texts")
    def embed_texts(body: EmbedTextsRequest) -> dict:
        if not 1 <= len(body.texts) <= settings.max_batch:
            raise HTTPException(413, f"give between 1 and {settings.max_batch} texts")
        texts = [check_text(t) for t in body.texts]
        return {"model": searcher.store.model.name, "embeddings": pipeline.embed_texts(texts).tolist()}

    @app.post("/api/embed/image")
    async def embed_image(file: UploadFile = File(...)) -> dict:
        image = await read_image(file)
        vector = await asyncio.to_thread(lambda: pipeline.embed_images([image])[0])
        return {"model": searcher.store.model.name, "embedding": vector.tolist()}

    page = resources.files("cliplab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    return app


def run_server(pipeline, store_dir: str, settings: ServeSettings) -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    app = create_app(pipeline, store_dir, settings)
    print(f"cliplab serve: http://{settings.host}:{settings.port}/  (API docs at /docs)")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
