"""Request and response bodies, and the JSON form of a search hit."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from ...index.search import Hit


class SearchRequest(BaseModel):
    q: str = Field(..., description="the text query")
    k: int = 20
    target: str = "image"


class EmbedTextsRequest(BaseModel):
    texts: list[str] = Field(..., description="texts to embed")


class ClassifyResult(BaseModel):
    label: str
    probability: float


def hit_json(hit: Hit) -> dict:
    """A hit as the API and the page show it: images with a name and a thumbnail URL, texts with their
    text and their id in the captions file."""
    item = hit.item
    result = {"rank": hit.rank, "score": round(hit.score, 6), "id": item.id, "kind": item.kind}
    if item.kind == "image":
        result["name"] = Path(item.path or "").name
        result["thumbnail"] = f"/api/thumbnail/{item.id}"
    else:
        result["text"] = item.caption
        result["text_id"] = item.text_id
    return result
