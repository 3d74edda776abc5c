"""Stored items and their thumbnails (looked up by id only: no path can be named)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response

from ...index.search import Hit, Searcher
from ..dependencies import get_searcher, get_thumbnails, require_token
from ..thumbnails import ThumbnailCache
from .schemas import hit_json

router = APIRouter(prefix="/api", tags=["items"], dependencies=[Depends(require_token)])


@router.get("/item/{item_id}")
def item(item_id: int, searcher: Searcher = Depends(get_searcher)) -> dict:
    found = searcher.store.item(item_id)
    if found is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return hit_json(Hit(0, 1.0, found))


@router.get("/thumbnail/{item_id}", responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(
    item_id: int, searcher: Searcher = Depends(get_searcher), thumbnails: ThumbnailCache = Depends(get_thumbnails)
) -> Response:
    found = searcher.store.item(item_id)
    if found is None or found.kind != "image" or not found.path:
        raise HTTPException(404, f"no image with id {item_id} in the store")
    data = thumbnails.get(item_id, found.path)
    if data is None:
        raise HTTPException(410, f"the file of item {item_id} can no longer be read")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
