"""Pictures: the cosine-similarity matrix of images (columns, with thumbnails) against texts (rows),
training curves, and a generation's similarity curve. Figures are drawn without pyplot, so a
notebook's or an application's matplotlib backend is never switched."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .files import read_jsonl


def plot_similarity(
    similarity: np.ndarray,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    path: str | os.PathLike,
    title: str = "Cosine similarity between text and image features",
) -> None:
    """Save a heatmap of ``similarity`` ``[n_images, n_texts]`` with image thumbnails above the
    columns and the texts beside the rows."""
    n_images, n_texts = similarity.shape
    if n_images != len(images) or n_texts != len(texts):
        raise ValueError(f"matrix {similarity.shape} does not match {len(images)} images and {len(texts)} texts")
    matrix = similarity.T  # rows: texts, columns: images
    fig = Figure(figsize=(2 + 1.3 * n_images, 2.2 + 0.6 * n_texts))
    ax = fig.subplots()
    ax.imshow(matrix, vmin=min(0.1, float(matrix.min())), vmax=max(0.3, float(matrix.max())), cmap="viridis")
    ax.set_yticks(range(n_texts), ["\n".join(textwrap.wrap(t, 40)) for t in texts], fontsize=9)
    ax.set_xticks([])
    for i, image in enumerate(images):
        thumb = image.convert("RGB").copy()
        thumb.thumbnail((128, 128))
        ax.imshow(np.asarray(thumb), extent=(i - 0.5, i + 0.5, -0.6, -1.6))
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xlim(-0.5, n_images - 0.5)
    ax.set_ylim(n_texts - 0.5, -1.7)
    for side in ("left", "top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_run(metrics_path: str | os.PathLike, path: str | os.PathLike) -> None:
    """Training curves from a run's ``metrics.jsonl``: loss and temperature over samples seen, and
    the held-out evaluations made during the run."""
    records = read_jsonl(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    if not train:
        raise ValueError(f"{metrics_path} has no training records")
    panels = 3 if evals else 2
    fig = Figure(figsize=(5 * panels, 3.8))
    axes = fig.subplots(1, panels)
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0].set(xlabel="step", ylabel="contrastive loss", title="training loss")
    axes[1].plot(steps, [r["logit_scale"] for r in train], lw=1, color="tab:orange")
    axes[1].set(xlabel="step", ylabel="exp(logit_scale)", title="temperature (inverse)")
    if evals:
        ax = axes[2]
        eval_steps = [r["step"] for r in evals]
        for section, key, label in [
            ("zeroshot", "top1", "zero-shot top-1"),
            ("zeroshot", "top5", "zero-shot top-5"),
            ("retrieval", "text_to_image_R@10", "text→image R@10"),
            ("retrieval", "image_to_text_R@10", "image→text R@10"),
        ]:
            values = [r["eval"].get(section, {}).get(key) for r in evals]
            if any(v is not None for v in values):
                ax.plot(eval_steps, values, marker="o", label=label)
        ax.set(xlabel="step", ylabel="fraction", title="held-out evaluation", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_similarity_curve(similarities: Sequence[float], prompt: str, path: str | os.PathLike) -> None:
    """The cosine similarity of a generated image to its prompt over the optimisation steps."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(range(len(similarities)), similarities, lw=1.5)
    ax.set(xlabel="step", ylabel="cosine(image, text)", title=f"towards {prompt!r}"[:60])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
