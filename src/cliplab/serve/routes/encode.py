"""The encoders over HTTP: zero-shot classification and embeddings of texts and images."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from ...index.search import Searcher
from ...zeroshot import ZeroShotClassifier
from ..dependencies import check_text, get_searcher, get_settings, read_image, require_token
from ..settings import ServeSettings
from .schemas import ClassifyResult, EmbedTextsRequest

router = APIRouter(prefix="/api", tags=["encoders"], dependencies=[Depends(require_token)])


@router.post("/classify")
async def classify(
    file: UploadFile = File(...),
    labels: str = Form(..., description="comma-separated labels"),
    k: int = Form(5),
    searcher: Searcher = Depends(get_searcher),
    settings: ServeSettings = Depends(get_settings),
) -> list[ClassifyResult]:
    names = [check_text(s.strip(), settings) for s in labels.split(",") if s.strip()]
    if not 1 <= len(names) <= settings.max_batch:
        raise HTTPException(422, f"give between 1 and {settings.max_batch} comma-separated labels")
    image = await read_image(file, settings)
    pipeline = searcher.pipeline

    def run() -> list[ClassifyResult]:
        classifier = ZeroShotClassifier.from_labels(pipeline, names)
        predictions = classifier.classify(pipeline, [image], top_k=min(max(k, 1), len(names)))[0]
        return [ClassifyResult(label=p.label, probability=p.probability) for p in predictions]

    return await asyncio.to_thread(run)


@router.post("/embed/texts")
def embed_texts(
    body: EmbedTextsRequest, searcher: Searcher = Depends(get_searcher), settings: ServeSettings = Depends(get_settings)
) -> dict:
    if not 1 <= len(body.texts) <= settings.max_batch:
        raise HTTPException(413, f"give between 1 and {settings.max_batch} texts")
    texts = [check_text(t, settings) for t in body.texts]
    return {"model": searcher.store.model.name, "embeddings": searcher.pipeline.embed_texts(texts).tolist()}


@router.post("/embed/image")
async def embed_image(
    file: UploadFile = File(...),
    searcher: Searcher = Depends(get_searcher),
    settings: ServeSettings = Depends(get_settings),
) -> dict:
    image = await read_image(file, settings)
    vector = await asyncio.to_thread(lambda: searcher.pipeline.embed_images([image])[0])
    return {"model": searcher.store.model.name, "embedding": vector.tolist()}
