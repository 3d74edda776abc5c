"""Searches in every direction: by text, by an uploaded image, by a stored item."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile

from ...index.search import Hit, Searcher
from ..dependencies import check_query, check_text, get_searcher, get_settings, read_image, require_token
from ..settings import ServeSettings
from .schemas import SearchRequest, hit_json

router = APIRouter(prefix="/api", tags=["search"], dependencies=[Depends(require_token)])


@router.get("/search")
def search_text(
    q: str = Query(..., description="the text query"),
    k: int = 20,
    target: str = "image",
    searcher: Searcher = Depends(get_searcher),
    settings: ServeSettings = Depends(get_settings),
) -> dict:
    """The stored items nearest to a text."""
    check_query(k, target, settings)
    q = check_text(q, settings)
    hits = searcher.text(q, k, target)
    return {"query": q, "target": target, "hits": [hit_json(h) for h in hits]}


@router.post("/search")
def search_text_post(
    body: SearchRequest, searcher: Searcher = Depends(get_searcher), settings: ServeSettings = Depends(get_settings)
) -> dict:
    """The same as ``GET /api/search``, for long queries and scripts."""
    return search_text(body.q, body.k, body.target, searcher, settings)


@router.post("/search/image")
async def search_image(
    file: UploadFile = File(...),
    k: int = Form(20),
    target: str = Form("image"),
    searcher: Searcher = Depends(get_searcher),
    settings: ServeSettings = Depends(get_settings),
) -> dict:
    """The stored items nearest to an uploaded image."""
    check_query(k, target, settings)
    image = await read_image(file, settings)
    hits = await asyncio.to_thread(searcher.image, image, k, target)
    return {"query": file.filename, "target": target, "hits": [hit_json(h) for h in hits]}


@router.get("/search/item/{item_id}")
def search_item(
    item_id: int,
    k: int = 20,
    target: str = "image",
    searcher: Searcher = Depends(get_searcher),
    settings: ServeSettings = Depends(get_settings),
) -> dict:
    """The stored items nearest to a stored item (the item itself, as ``query_item``, excluded)."""
    check_query(k, target, settings)
    found = searcher.store.item(item_id)
    if found is None:
        raise HTTPException(404, f"no item with id {item_id}")
    hits = searcher.item(item_id, k, target)
    return {
        "query": item_id,
        "query_item": hit_json(Hit(0, 1.0, found)),
        "target": target,
        "hits": [hit_json(h) for h in hits],
    }
