"""Held-out evaluation: zero-shot classification (top-1/top-5 with a prompt ensemble) and
image<->text retrieval (recall@1/5/10 in both directions), each with its chance level."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .api import Pipeline
from .files import read_jsonl
from .zeroshot import ZeroShotClassifier


def read_items(path: str | Path) -> list[dict]:
    """Evaluation items from a JSONL, CSV or TSV file (each with an ``image`` and a ``concept`` or
    ``caption``), image paths made absolute against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such evaluation file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab"):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            items = [dict(row) for row in csv.DictReader(handle, delimiter="," if suffix == ".csv" else "\t")]
    elif suffix in (".jsonl", ".ndjson", ".json"):
        items = read_jsonl(path)
    else:
        raise ValueError(f"{path}: evaluation files are .jsonl, .csv or .tsv, not {suffix!r}")
    for number, item in enumerate(items, start=1):
        if not item.get("image"):
            raise ValueError(f"{path}: item {number} has no 'image' field (columns: {', '.join(item)})")
        item["image"] = str((path.parent / item["image"]).resolve())
    return items


def _require(items: Sequence[dict], field: str, path: str | Path) -> None:
    missing = next((i for i, item in enumerate(items, start=1) if not item.get(field)), None)
    if missing is not None:
        raise ValueError(f"{path}: item {missing} has no {field!r} field")


def _top_k_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target column is among the k highest scores. Ties count against the
    target and rows with non-finite scores are misses, so a collapsed or diverged model scores 0."""
    target_scores = scores[np.arange(len(targets)), targets]
    at_least_as_good = (scores >= target_scores[:, None]).sum(axis=1) - 1
    hits = (at_least_as_good < k) & np.isfinite(scores).all(axis=1)
    return float(np.mean(hits))


def zeroshot_eval(
    pipeline: Pipeline,
    items: Sequence[dict],
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = ("{}",),
    batch_size: int = 256,
    image_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy of classifying each item's image among ``class_names`` (default: the
    distinct ``concept`` values of the items). ``image_embeddings`` (one row per item) skips
    embedding the images again when the caller already has them."""
    class_names = sorted({item["concept"] for item in items}) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    known = [i for i, item in enumerate(items) if item["concept"] in index]
    if not known:
        raise ValueError("no evaluation item has a concept among the class names")
    items = [items[i] for i in known]
    classifier = ZeroShotClassifier.from_labels(pipeline, class_names, list(templates))
    if image_embeddings is None:
        embeddings = pipeline.embed_images([item["image"] for item in items], batch_size=batch_size)
    else:
        embeddings = image_embeddings[known]
    scores = embeddings @ classifier.weights.T
    targets = np.array([index[item["concept"]] for item in items])
    n_classes = len(class_names)
    return {
        "top1": _top_k_hits(scores, targets, 1),
        "top5": _top_k_hits(scores, targets, 5),
        "chance_top1": 1 / n_classes,
        "chance_top5": min(5, n_classes) / n_classes,
        "classes": n_classes,
        "images": len(items),
    }


def retrieval_eval(
    pipeline: Pipeline, items: Sequence[dict], ks: Sequence[int] = (1, 5, 10), batch_size: int = 256
) -> dict[str, float]:
    """Recall@k for image->text and text->image over paired items (the pair is the only match)."""
    images = pipeline.embed_images([item["image"] for item in items], batch_size=batch_size)
    texts = pipeline.embed_texts([item["caption"] for item in items])
    similarity = images @ texts.T
    targets = np.arange(len(items))
    result: dict[str, float] = {"pairs": len(items)}
    for k in ks:
        result[f"image_to_text_R@{k}"] = _top_k_hits(similarity, targets, k)
        result[f"text_to_image_R@{k}"] = _top_k_hits(similarity.T, targets, k)
        result[f"chance_R@{k}"] = min(k, len(items)) / len(items)
    return result


def class_names_for(zeroshot_path: str | Path) -> list[str] | None:
    """The class list stored beside a zero-shot set (``concepts.json``), if there is one."""
    candidate = Path(zeroshot_path).parent / "concepts.json"
    return json.loads(candidate.read_text()) if candidate.is_file() else None


def evaluate(
    pipeline: Pipeline,
    zeroshot: str = "",
    retrieval: str = "",
    templates: Sequence[str] = ("{}",),
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    results = {}
    if zeroshot:
        items = read_items(zeroshot)
        _require(items, "concept", zeroshot)
        results["zeroshot"] = zeroshot_eval(pipeline, items, class_names_for(zeroshot), templates, batch_size)
    if retrieval:
        items = read_items(retrieval)
        _require(items, "caption", retrieval)
        results["retrieval"] = retrieval_eval(pipeline, items, batch_size=batch_size)
    return results
