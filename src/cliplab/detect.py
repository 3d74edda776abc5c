"""Zero-shot detection and relevance maps from the CLIP encoders alone, with sliding windows.

Square windows slide over the image at several scales with overlap; every crop is embedded (in
batches, with the model's own preprocessing) and scored against each query: a prompt-ensemble
query embedding contrasted with neutral background prompts, ``softmax(logit_scale * [cos(query),
cos(contrast_1), ...])[0]`` over neutral background prompts and a vocabulary of common objects (the
80 COCO categories), so a score is the probability that the crop shows the query rather than an
empty background or some everyday thing. (Against the background prompts alone, any crop holding
*some* object scores high; the vocabulary makes the score specific to the query.) Each query's per-pixel heatmap is the mean score of the windows covering
the pixel; its boxes are the windows above a threshold after non-maximum suppression.

The relevance map of one text over one image (:func:`relevance_map`) is the same heatmap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .api import Pipeline
from .images import ImageInput, load_image, to_rgb
from .zeroshot import ZeroShotClassifier

#: Prompt templates for queries (those the default model is evaluated with).
QUERY_TEMPLATES = ("{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}.")
#: Neutral prompts a crop must beat to count as the query.
BACKGROUND_PROMPTS = ("background", "an empty background", "a plain texture", "a blank image")
#: Everyday objects a crop must also beat (the 80 COCO categories): the neutral vocabulary.
CONTRAST_VOCABULARY = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
#: Window sides as fractions of the image's shorter side.
WINDOW_SCALES = (0.2, 0.3, 0.4, 0.55, 0.75)

Box = tuple[int, int, int, int]


@dataclass
class Detection:
    """One box: ``[x0, y0, x1, y1]`` in pixels of the input image (x1, y1 exclusive)."""

    box: Box
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"box": list(self.box), "label": self.label, "score": round(self.score, 6)}


@dataclass
class DetectionResult:
    """Boxes of all queries, best first, and one ``[height, width]`` heatmap per query (in [0, 1])."""

    boxes: list[Detection]
    heatmaps: dict[str, np.ndarray]
    windows: np.ndarray = field(repr=False)  # [n_windows, 4] x0, y0, x1, y1
    window_scores: np.ndarray = field(repr=False)  # [n_windows, n_queries]

    def best(self, label: str) -> Detection | None:
        """The highest-scoring box of ``label`` (among those kept), if any."""
        return next((d for d in self.boxes if d.label == label), None)


def sliding_windows(
    width: int, height: int, scales: Sequence[float] = WINDOW_SCALES, overlap: float = 0.75, min_side: int = 8
) -> np.ndarray:
    """Square windows ``[n, 4]`` (x0, y0, x1, y1) covering the image at each scale (a fraction of
    the shorter side), consecutive windows overlapping by ``overlap`` of their side; the last row
    and column sit flush with the image's edges."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    boxes = []
    for scale in scales:
        # At least min_side, at most the image (an image smaller than min_side is one window).
        side = min(max(min_side, round(scale * min(width, height))), width, height)
        stride = max(1, round(side * (1 - overlap)))
        xs = _starts(width, side, stride)
        ys = _starts(height, side, stride)
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs]
    return np.unique(np.array(boxes, dtype=np.int64), axis=0)


def _starts(length: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of boxes (x0, y0, x1, y1)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _box(values: np.ndarray) -> Box:
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep: list[int] = []
    while order:
        best, order = order[0], order[1:]
        keep.append(int(best))
        if order:
            ious = box_iou(boxes[best], boxes[order])[0]
            order = [i for i, iou in zip(order, ious) if iou <= iou_threshold]
    return keep


def accumulate_heatmap(windows: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per-pixel mean of the scores of the windows covering each pixel, ``[height, width]``."""
    total = np.zeros((height + 1, width + 1), dtype=np.float64)
    count = np.zeros((height + 1, width + 1), dtype=np.float64)
    for (x0, y0, x1, y1), s in zip(windows, scores):  # 2-D difference arrays: O(1) per window
        for grid, value in ((total, s), (count, 1.0)):
            grid[y0, x0] += value
            grid[y0, x1] -= value
            grid[y1, x0] -= value
            grid[y1, x1] += value
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = count.cumsum(0).cumsum(1)[:height, :width]
    return (total / np.maximum(count, 1)).astype(np.float32)


def embed_crops(
    pipeline: Pipeline, image: Image.Image, windows: np.ndarray, batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """L2-normalised embeddings ``[n_windows, embed_dim]`` of the image's crops, each preprocessed
    as the model expects (resized to its input size, normalised)."""
    out = np.empty((len(windows), pipeline.embed_dim), dtype=np.float32)
    with tqdm(total=len(windows), unit="crop", desc="embedding windows", disable=not progress) as bar:
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            pixels = pipeline.preprocess.batch(
                [image.crop((int(box[0]), int(box[1]), int(box[2]), int(box[3]))) for box in chunk]
            )
            features = pipeline.encode_image(pixels).float()
            out[start : start + len(chunk)] = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
            bar.update(len(chunk))
    return out


def query_scores(
    pipeline: Pipeline,
    crop_embeddings: np.ndarray,
    queries: Sequence[str],
    templates: Sequence[str] = QUERY_TEMPLATES,
    background: Sequence[str] = BACKGROUND_PROMPTS,
    vocabulary: Sequence[str] = CONTRAST_VOCABULARY,
) -> np.ndarray:
    """``[n_crops, n_queries]``: for each query on its own, the softmax probability of the query
    (a prompt ensemble) against the background prompts and the vocabulary words (prompt ensembles;
    a word equal to the query is left out), at the model's logit scale. Queries do not compete."""
    if not background:
        raise ValueError("give one or more background prompts to contrast the queries with")
    names = list(queries) + list(vocabulary)
    ensembles = ZeroShotClassifier.from_labels(pipeline, names, list(templates)).weights
    contrast = np.concatenate([pipeline.embed_texts(list(background)), ensembles[len(queries) :]])
    scale = pipeline.logit_scale
    query_logits = scale * crop_embeddings @ ensembles[: len(queries)].T  # [n, q]
    contrast_logits = scale * crop_embeddings @ contrast.T  # [n, background + vocabulary]
    scores = np.empty_like(query_logits)
    for j, query in enumerate(queries):
        keep = [
            i
            for i in range(len(contrast))
            if i < len(background) or vocabulary[i - len(background)].lower() != query.lower()
        ]
        logits = np.concatenate([query_logits[:, j : j + 1], contrast_logits[:, keep]], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        scores[:, j] = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    return scores.astype(np.float32)


def detect(
    pipeline: Pipeline,
    image: ImageInput,
    queries: str | Sequence[str],
    *,
    scales: Sequence[float] = WINDOW_SCALES,
    overlap: float = 0.75,
    threshold: float = 0.5,
    iou_threshold: float = 0.3,
    max_boxes: int = 5,
    templates: Sequence[str] = QUERY_TEMPLATES,
    background: Sequence[str] = BACKGROUND_PROMPTS,
    vocabulary: Sequence[str] = CONTRAST_VOCABULARY,
    batch_size: int = 128,
    progress: bool = False,
) -> DetectionResult:
    """Find where each text query is in ``image``.

    Returns the boxes scoring at least ``threshold`` after non-maximum suppression (at most
    ``max_boxes`` per query; ``threshold=0`` always keeps each query's best window) and each query's
    heatmap. Box coordinates are pixels of ``image``.
    """
    queries = [q.strip() for q in ([queries] if isinstance(queries, str) else queries)]
    if not queries or any(not q for q in queries):
        raise ValueError("detection needs one or more non-empty text queries")
    picture = to_rgb(image if isinstance(image, Image.Image) else load_image(image))
    width, height = picture.size
    windows = sliding_windows(width, height, scales, overlap)
    scores = query_scores(
        pipeline,
        embed_crops(pipeline, picture, windows, batch_size, progress),
        queries,
        templates,
        background,
        vocabulary,
    )
    boxes: list[Detection] = []
    heatmaps: dict[str, np.ndarray] = {}
    for j, query in enumerate(queries):
        heatmaps[query] = accumulate_heatmap(windows, scores[:, j], width, height)
        above = np.flatnonzero(scores[:, j] >= threshold)
        kept = [above[i] for i in nms(windows[above], scores[above, j], iou_threshold)][:max_boxes]
        boxes += [Detection(_box(windows[i]), query, float(scores[i, j])) for i in kept]
    boxes.sort(key=lambda d: -d.score)
    return DetectionResult(boxes, heatmaps, windows, scores)


def relevance_map(pipeline: Pipeline, image: ImageInput, text: str, **options) -> np.ndarray:
    """Where in ``image`` the model sees ``text``: the ``[height, width]`` window heatmap in [0, 1]."""
    return detect(pipeline, image, [text], threshold=1.1, **options).heatmaps[text.strip()]


_BOX_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120), (255, 120, 255), (255, 160, 60))


def heatmap_overlay(image: ImageInput, heatmap: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The image with a heatmap (values in [0, 1]) blended over it in the 'inferno' colour map,
    stretched to the map's own range so weak models' maps stay visible."""
    picture = to_rgb(image if isinstance(image, Image.Image) else load_image(image))
    low, high = float(heatmap.min()), float(heatmap.max())
    norm = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    colours = (colormaps["inferno"](norm)[..., :3] * 255).astype(np.uint8)
    return Image.blend(picture, Image.fromarray(colours).resize(picture.size), alpha)


def draw_overlay(
    image: ImageInput, result: DetectionResult, path: str | os.PathLike | None = None, alpha: float = 0.55
) -> Image.Image:
    """The image under its heatmap (the pixelwise maximum over queries) with the boxes and their
    labels and scores; saved to ``path`` when given."""
    heat = np.max(np.stack(list(result.heatmaps.values())), axis=0)
    canvas = heatmap_overlay(image, heat, alpha)
    draw = ImageDraw.Draw(canvas)
    labels = list(result.heatmaps)
    line = max(2, round(min(canvas.size) / 160))
    for det in result.boxes:
        colour = _BOX_COLOURS[labels.index(det.label) % len(_BOX_COLOURS)]
        draw.rectangle([det.box[0], det.box[1], det.box[2] - 1, det.box[3] - 1], outline=colour, width=line)
        text = f"{det.label} {det.score:.2f}"
        x, y = det.box[0] + line, max(0, det.box[1] - 12)
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        draw.text((x, y), text, fill=colour)
    if path is not None:
        canvas.save(path)
    return canvas


def save_relevance(
    image: ImageInput, heatmap: np.ndarray, text: str, path: str | os.PathLike, side: int = 256
) -> Image.Image:
    """The image beside its relevance map for ``text`` (captioned), scaled to ``side`` px high."""
    picture = to_rgb(image if isinstance(image, Image.Image) else load_image(image))
    overlay = heatmap_overlay(picture, heatmap)
    width = max(1, round(picture.width * side / picture.height))
    panel = Image.new("RGB", (2 * width + 8, side + 18), (255, 255, 255))
    panel.paste(picture.resize((width, side), Image.Resampling.BICUBIC), (0, 18))
    panel.paste(overlay.resize((width, side), Image.Resampling.BICUBIC), (width + 8, 18))
    ImageDraw.Draw(panel).text((3, 3), f"relevance of {text!r} (bright: high)", fill=(0, 0, 0))
    panel.save(path)
    return panel
