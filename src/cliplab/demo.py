"""``cliplab demo``: load the default model, classify a few images zero-shot and draw the
similarity matrix.

Until the training recipe provides a trained ``cliplab-mini``, the demo writes an *untrained*
placeholder (random ``ViT-nano`` weights, seed 0) so the pipeline runs end to end; its predictions
are meaningless and the demo says so.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .api import DEFAULT_MODEL, cliplab_home, load
from .checkpoints import write_checkpoint
from .model import CLIP, get_preset

SHAPES = {"a red circle": ("red", "ellipse"), "a blue square": ("blue", "rectangle"),
          "a green triangle": ("green", "polygon"), "a yellow star": ("gold", "star")}


def draw_shape(color: str, shape: str, size: int = 160) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
    if shape == "ellipse":
        draw.ellipse(box, fill=color)
    elif shape == "rectangle":
        draw.rectangle(box, fill=color)
    elif shape == "polygon":
        draw.polygon([(size * 0.5, size * 0.15), (size * 0.15, size * 0.85), (size * 0.85, size * 0.85)], fill=color)
    else:  # five-pointed star: alternate outer and inner radius every 36 degrees
        points = [(size / 2 + r * math.sin(math.pi * k / 5), size / 2 - r * math.cos(math.pi * k / 5))
                  for k, r in enumerate([size * 0.38, size * 0.15] * 5)]
        draw.polygon(points, fill=color)
    return image


def ensure_default_model() -> Path:
    """The default model's folder, writing the untrained placeholder if nothing is there."""
    folder = cliplab_home() / "models" / DEFAULT_MODEL
    if not (folder / "cliplab_config.json").is_file():
        torch.manual_seed(0)
        model = CLIP(get_preset("ViT-nano"))
        write_checkpoint(model, folder, metadata={"trained": False, "note": "untrained placeholder (seed 0)"})
    return folder


def run_demo(out: Path, device: str | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    folder = ensure_default_model()
    start = time.perf_counter()
    clip = load(DEFAULT_MODEL, device=device)
    trained = clip.checkpoint.metadata.get("trained", True) if clip.checkpoint else True
    print(f"loaded {DEFAULT_MODEL} from {folder} in {time.perf_counter() - start:.2f} s on {clip.device}")
    if not trained:
        print("NOTE: this is an UNTRAINED placeholder model (random weights): the pipeline runs, the predictions "
              "are chance. The training recipe will replace it with a trained cliplab-mini.")

    from .plotting import plot_similarity
    from .zeroshot import ZeroShotClassifier

    labels = list(SHAPES)
    images = [draw_shape(*SHAPES[label]) for label in labels]
    classifier = ZeroShotClassifier.from_labels(clip, labels, "imagenet7")
    correct = 0
    for label, preds in zip(labels, classifier.classify(clip, images, top_k=2)):
        correct += preds[0].label == label
        print(f"  image of {label!r:20} -> {preds[0].label!r} ({preds[0].probability:.1%})")
    print(f"zero-shot top-1: {correct}/{len(labels)} (chance {1 / len(labels):.0%})")

    matrix = clip.embed_images(images) @ clip.embed_texts(labels).T
    plot_path = out / "similarity.png"
    plot_similarity(matrix, images, labels, plot_path)
    print(f"similarity matrix plot: {plot_path}")
    return 0
