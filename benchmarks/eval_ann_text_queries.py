"""How well the store's IVF index answers text queries over real image embeddings.

``bench_search.py`` measures speed on synthetic vectors; it cannot say where real text queries fall,
because CLIP's texts and images lie in two separate regions of the space (the modality gap) and an
inverted file is tuned on image vectors. This evaluation uses real embeddings from the default model
``cliplab-mini`` (train it with ``make demo`` first): every image of the sample corpus in several
random crops and flips, so the store is large enough for IVF, searched with the corpus's real captions
(texts the model never stored) and with new crops of the images. For each way of tuning ``nprobe`` it
reports recall@10 against exact search and the single-query latency.

    python benchmarks/eval_ann_text_queries.py --views 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cliplab import load
from cliplab.index import ann


def augmented_views(path: Path, views: int, rng: random.Random) -> list[Image.Image]:
    """``views`` random crops (40-100 % of the area, aspect 3:4 to 4:3), half of them mirrored."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    result = []
    for _ in range(views):
        area = rng.uniform(0.4, 1.0) * width * height
        aspect = rng.uniform(3 / 4, 4 / 3)
        w = max(8, min(width, round((area * aspect) ** 0.5)))
        h = max(8, min(height, round((area / aspect) ** 0.5)))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        view = image.crop((left, top, left + w, top + h))
        result.append(ImageOps.mirror(view) if rng.random() < 0.5 else view)
    return result


def embed_views(pipeline, paths: list[Path], views: int, seed: int) -> np.ndarray:
    rng = random.Random(seed)
    chunks, batch = [], []
    for number, path in enumerate(paths, 1):
        batch.extend(augmented_views(path, views, rng))
        if len(batch) >= 1024 or number == len(paths):
            chunks.append(pipeline.embed_images(batch, batch_size=256))
            batch = []
            print(f"\r  embedded views of {number}/{len(paths)} images", end="", flush=True)
    print()
    return np.concatenate(chunks).astype(np.float32)


def measure(index: ann.VectorIndex, exact: ann.VectorIndex, queries: np.ndarray) -> dict:
    _, truth = exact.search(queries, 10)
    _, found = index.search(queries, 10)
    times = []
    for query in queries[:300]:
        start = time.perf_counter()
        index.search(query[None], 10)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "recall@10": round(ann.recall_at_k(found, truth), 4),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("CLIPLAB_HOME", Path.home() / ".cache/cliplab"))
    )
    parser.add_argument("--views", type=int, default=8, help="stored crops per corpus image")
    parser.add_argument("--queries", type=int, default=1000, help="text queries and image queries each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    corpus = args.home / "corpus"
    if not (corpus / "pairs.jsonl").exists():
        raise SystemExit(
            f"error: no sample corpus under {corpus}; run `make demo` first (it builds the corpus "
            "and trains cliplab-mini), or pass --home"
        )
    pipeline = load("cliplab-mini")
    pairs = [json.loads(line) for line in (corpus / "pairs.jsonl").open()]
    paths = sorted({corpus / pair["image"] for pair in pairs})
    captions = sorted({pair["caption"] for pair in pairs})
    random.Random(0).shuffle(captions)
    query_texts, store_texts = captions[: args.queries], captions[args.queries : args.queries + 2000]

    print(f"{len(paths)} corpus images x {args.views} views, {len(captions)} distinct captions")
    vectors = embed_views(pipeline, paths, args.views, seed=0)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    query_paths = random.Random(1).sample(paths, args.queries)
    image_queries = embed_views(pipeline, query_paths, 1, seed=1)
    text_queries = pipeline.embed_texts(query_texts).astype(np.float32)
    probe_texts = pipeline.embed_texts(store_texts).astype(np.float32)

    exact = ann.flat_index("image", ids, vectors)
    gap = float(np.mean(text_queries @ vectors[:5000].T)), float(np.mean(image_queries @ vectors[:5000].T))
    result = {
        "stored_vectors": len(vectors),
        "dim": vectors.shape[1],
        "mean_cosine_text_to_images": round(gap[0], 3),
        "mean_cosine_image_to_images": round(gap[1], 3),
        "tunings": {},
    }
    # (name, nprobe margin, cross-modal tuning queries): the store's default for images alone, the same
    # without the margin, and a store that also holds captions, which tunes with them as queries.
    tunings = [
        ("images only, no margin", 1, None),
        (f"images only, margin x{ann.NPROBE_MARGIN} (default)", ann.NPROBE_MARGIN, None),
        ("with 2000 stored captions (default)", ann.NPROBE_MARGIN, probe_texts),
    ]
    for name, margin, other in tunings:
        start = time.perf_counter()
        index = ann.ivf_index("image", ids, vectors, other_queries=other, nprobe_margin=margin)
        row = {
            "build_s": round(time.perf_counter() - start, 1),
            "nlist": index.params.nlist,
            "nprobe": index.params.nprobe,
            "text queries": measure(index, exact, text_queries),
            "image queries": measure(index, exact, image_queries),
        }
        result["tunings"][name] = row
        print(
            f"{name}: nlist {row['nlist']} nprobe {row['nprobe']}  text {row['text queries']}  "
            f"image {row['image queries']}"
        )
    result["exact_p50_ms"] = measure(exact, exact, text_queries[:100])["p50_ms"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
