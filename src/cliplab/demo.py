"""``cliplab demo``, the main job: build the sample corpus, train the default model ``cliplab-mini``
on it (first run only, ~10 minutes on 2 CPU cores; cached afterwards), then show what it does on
data it never trained on: zero-shot classification of the held-out OpenMoji style, text -> image
searches, and the similarity matrix.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np

from .api import DEFAULT_MODEL, cliplab_home, load

CORPUS_IMAGE_SIZE = 64  # the default model's input size: no resize work in training
SEARCHES = ["a red apple", "a smiling face with sunglasses", "a cat", "a rocket", "a pizza", "the flag of japan"]
MATRIX_CONCEPTS = ["red apple", "cat face", "rocket", "pizza", "soccer ball", "grinning face"]


def recipe_path() -> Path:
    return Path(str(resources.files("cliplab") / "recipes" / f"{DEFAULT_MODEL}.toml"))


def ensure_corpus() -> Path:
    from .train.corpus import build_sample_corpus

    corpus = cliplab_home() / "corpus"
    build_sample_corpus(corpus, image_size=CORPUS_IMAGE_SIZE)
    return corpus


def ensure_default_model(corpus: Path, device: str | None = None) -> Path:
    """Train ``cliplab-mini`` from the committed recipe unless it is already there. An interrupted
    training run resumes where it stopped."""
    from .train.config import load_config
    from .train.loop import train

    folder = cliplab_home() / "models" / DEFAULT_MODEL
    if (folder / "cliplab_config.json").is_file():
        return folder
    run = cliplab_home() / "runs" / DEFAULT_MODEL
    config = load_config(recipe_path(), [
        f'data.train=[["{corpus / "train.jsonl"}", 1.0]]',
        f'eval.zeroshot="{corpus / "zeroshot_test.jsonl"}"',
        f'eval.retrieval="{corpus / "retrieval_test.jsonl"}"',
    ])
    print(f"training {DEFAULT_MODEL} from {recipe_path()} (first run only; about 8 minutes on 2 cores)")
    train(config, run, resume=True, device=device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run / "model", staging)
    shutil.rmtree(folder, ignore_errors=True)  # a leftover without its config is incomplete
    os.replace(staging, folder)  # the model appears whole or not at all
    return folder


def run_demo(out: Path, device: str | None = None) -> int:
    from .plotting import plot_run, plot_similarity
    from .preprocess import load_image
    from .train.evaluate import class_names_for, read_jsonl, retrieval_eval, zeroshot_eval

    out.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus()
    folder = ensure_default_model(corpus, device)
    start = time.perf_counter()
    clip = load(DEFAULT_MODEL, device=device)
    meta = clip.checkpoint.metadata if clip.checkpoint else {}
    print(f"\nloaded {DEFAULT_MODEL} ({sum(p.numel() for p in clip.model.parameters()):,} parameters, trained "
          f"{meta.get('steps', '?')} steps / {meta.get('train_seconds', '?')} s) in {time.perf_counter() - start:.2f} s")

    templates = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
    held_out = read_jsonl(corpus / "zeroshot_test.jsonl")
    vectors = clip.embed_images([item["image"] for item in held_out])
    z = zeroshot_eval(clip, held_out, class_names_for(corpus / "zeroshot_test.jsonl"), templates,
                      image_embeddings=vectors)
    r = retrieval_eval(clip, read_jsonl(corpus / "retrieval_test.jsonl"))
    print(f"\nzero-shot on the held-out OpenMoji style ({z['images']} images, {z['classes']} classes, a drawing "
          f"style never seen in training):\n  top-1 {z['top1']:.1%}  (chance {z['chance_top1']:.2%})\n"
          f"  top-5 {z['top5']:.1%}  (chance {z['chance_top5']:.2%})")
    print(f"retrieval on {r['pairs']} held-out Openclipart drawings: text->image R@10 {r['text_to_image_R@10']:.1%}, "
          f"image->text R@10 {r['image_to_text_R@10']:.1%}  (chance {r['chance_R@10']:.1%})")

    print("\ntext -> image search over the held-out OpenMoji images (top 3 by cosine):")
    for query, qv in zip(SEARCHES, clip.embed_texts(SEARCHES)):
        best = np.argsort(-(vectors @ qv))[:3]
        print(f"  {query!r:34} -> " + ", ".join(f"{held_out[i]['concept']} ({vectors[i] @ qv:.2f})" for i in best))

    by_concept = {item["concept"]: item for item in held_out}
    chosen = [by_concept[c] for c in MATRIX_CONCEPTS if c in by_concept] or held_out[:6]
    images = [load_image(item["image"]) for item in chosen]
    captions = [f"an emoji of {item['concept']}" for item in chosen]
    plot_similarity(clip.embed_images(images) @ clip.embed_texts(captions).T, images, captions, out / "similarity.png",
                    title="cliplab-mini on held-out OpenMoji: cosine similarity")
    print(f"\nsimilarity matrix: {out / 'similarity.png'}")
    metrics = cliplab_home() / "runs" / DEFAULT_MODEL / "metrics.jsonl"
    if metrics.is_file():
        plot_run(metrics, out / "training.png")
        print(f"training curves: {out / 'training.png'}")
    (out / "results.json").write_text(json.dumps({"model": str(folder), "zeroshot": z, "retrieval": r}, indent=2))
    return 0
