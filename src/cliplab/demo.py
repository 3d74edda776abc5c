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

from .api import DEFAULT_MODEL, load
from .images import load_image
from .paths import cliplab_home

CORPUS_IMAGE_SIZE = 64  # the default model's input size: no resize work in training
SEARCHES = ["a red apple", "a smiling face with sunglasses", "a cat", "a rocket", "a pizza", "the flag of japan"]
MATRIX_CONCEPTS = ["red apple", "cat face", "rocket", "pizza", "soccer ball", "grinning face"]


def recipe_path() -> Path:
    return Path(str(resources.files("cliplab") / "recipes" / f"{DEFAULT_MODEL}.toml"))


def ensure_corpus() -> Path:
    from .data.corpus import build_sample_corpus

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
    config = load_config(
        recipe_path(),
        [
            f'data.train=[["{corpus / "train.jsonl"}", 1.0]]',
            f'eval.zeroshot="{corpus / "zeroshot_test.jsonl"}"',
            f'eval.retrieval="{corpus / "retrieval_test.jsonl"}"',
        ],
    )
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
    from .evaluate import class_names_for, read_items, retrieval_eval, zeroshot_eval
    from .plotting import plot_run, plot_similarity

    out.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus()
    folder = ensure_default_model(corpus, device)
    start = time.perf_counter()
    clip = load(DEFAULT_MODEL, device=device)
    meta = clip.checkpoint.metadata if clip.checkpoint else {}
    print(
        f"\nloaded {DEFAULT_MODEL} ({sum(p.numel() for p in clip.model.parameters()):,} parameters, trained "
        f"{meta.get('steps', '?')} steps / {meta.get('train_seconds', '?')} s) in {time.perf_counter() - start:.2f} s"
    )

    templates = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
    held_out = read_items(corpus / "zeroshot_test.jsonl")
    vectors = clip.embed_images([item["image"] for item in held_out])
    z = zeroshot_eval(
        clip, held_out, class_names_for(corpus / "zeroshot_test.jsonl"), templates, image_embeddings=vectors
    )
    r = retrieval_eval(clip, read_items(corpus / "retrieval_test.jsonl"))
    print(
        f"\nzero-shot on the held-out OpenMoji style ({z['images']} images, {z['classes']} classes, a drawing "
        f"style never seen in training):\n  top-1 {z['top1']:.1%}  (chance {z['chance_top1']:.2%})\n"
        f"  top-5 {z['top5']:.1%}  (chance {z['chance_top5']:.2%})"
    )
    print(
        f"retrieval on {r['pairs']} held-out Openclipart drawings: text->image R@10 {r['text_to_image_R@10']:.1%}, "
        f"image->text R@10 {r['image_to_text_R@10']:.1%}  (chance {r['chance_R@10']:.1%})"
    )

    by_concept = {item["concept"]: item for item in held_out}
    chosen = [by_concept[c] for c in MATRIX_CONCEPTS if c in by_concept] or held_out[:6]
    images = [load_image(item["image"]) for item in chosen]
    captions = [f"an emoji of {item['concept']}" for item in chosen]
    plot_similarity(
        clip.embed_images(images) @ clip.embed_texts(captions).T,
        images,
        captions,
        out / "similarity.png",
        title="cliplab-mini on held-out OpenMoji: cosine similarity",
    )
    print(f"\nsimilarity matrix: {out / 'similarity.png'}")
    metrics = cliplab_home() / "runs" / DEFAULT_MODEL / "metrics.jsonl"
    if metrics.is_file():
        plot_run(metrics, out / "training.png")
        print(f"training curves: {out / 'training.png'}")
    searches = search_held_out(clip, corpus, out)
    (out / "results.json").write_text(
        json.dumps({"model": str(folder), "zeroshot": z, "retrieval": r, "searches": searches}, indent=2)
    )
    return 0


def search_held_out(clip, corpus: Path, out: Path) -> dict:
    """Index the held-out images and captions into a store (incremental: instant after the first run)
    and print searches in every direction."""
    from .evaluate import read_items
    from .index import Searcher, index_paths

    records = read_items(corpus / "zeroshot_test.jsonl") + read_items(corpus / "retrieval_test.jsonl")
    concept_of = {str(Path(r["image"]).resolve()): r["concept"] for r in records}
    captions = out / "held_out_captions.jsonl"
    with open(captions, "w", encoding="utf-8") as handle:
        for record in read_items(corpus / "retrieval_test.jsonl"):
            handle.write(json.dumps({"id": record["id"], "text": record["caption"]}) + "\n")
    store = cliplab_home() / "stores" / "held-out"
    print(f"\nindexing the held-out images and captions into {store}")
    report = index_paths(clip, store, sorted(concept_of), captions=captions, progress=False)
    print(
        f"  {report.total_images} images, {report.total_texts} captions ({report.embedded} images embedded "
        f"this run, {report.unchanged} unchanged) in {report.seconds:.1f} s"
    )

    def show(hit) -> str:
        if hit.item.kind == "image":
            return f"{concept_of.get(hit.item.path, Path(hit.item.path).stem)} ({hit.score:.2f})"
        return f"{hit.item.caption[:40]!r} ({hit.score:.2f})"

    results: dict[str, list] = {}
    with Searcher(clip, store) as searcher:
        directions = [("text -> image", q, lambda q: searcher.text(q, 3)) for q in SEARCHES[:4]]
        examples = [r for r in records if r["concept"] in ("red apple", "rocket")][:2] or records[:2]
        directions += [
            ("image -> image", Path(r["image"]).name, lambda q, r=r: searcher.image(r["image"], 4)[1:])
            for r in examples
        ]
        directions += [
            ("image -> text", Path(r["image"]).name, lambda q, r=r: searcher.image(r["image"], 3, "text"))
            for r in examples
        ]
        directions += [("text -> text", q, lambda q: searcher.text(q, 3, "text")) for q in ("a red car", "a bird")]
        for direction, query, run in directions:
            hits = run(query)
            results.setdefault(direction, []).append({"query": query, "hits": [h.to_dict() for h in hits]})
            print(f"  {direction:15} {query!r:32} -> " + ", ".join(show(h) for h in hits))
    print(f'search it yourself: cliplab search {store} "a rocket"   or   cliplab serve {store}')
    return results
