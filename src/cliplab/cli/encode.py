"""``classify``, ``embed`` and ``similarity``: images and texts through the encoders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..templates import TEMPLATE_SETS
from .base import ONE_SHOT_ITEMS, CommandError, add_command, add_json, add_model, image_files, load_pipeline, print_json


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "classify",
        cmd_classify,
        "zero-shot classify images against text labels",
        examples=[
            'cliplab classify photo.jpg --labels "a cat,a dog,a bus"',
            "cliplab classify photos/*.jpg --labels-file classes.txt -k 3 --json",
            "cliplab classify a.jpg --labels 'cat,dog' --save-classifier pets.safetensors",
            "cliplab classify b.jpg --classifier pets.safetensors",
        ],
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", help="comma-separated class names or descriptions")
    p.add_argument("--labels-file", help="a file with one class name per line")
    p.add_argument(
        "--templates",
        default="imagenet80",
        help=f"prompt templates: {', '.join(TEMPLATE_SETS)}, or your own, '|'-separated, with {{}} for the label",
    )
    p.add_argument("-k", "--top-k", type=int, default=5, help="predictions per image")
    p.add_argument("--classifier", help="use class embeddings saved with --save-classifier instead of labels")
    p.add_argument("--save-classifier", help="save the class embeddings (safetensors) for reuse")
    add_json(p)
    add_model(p)

    p = add_command(
        commands,
        "embed",
        cmd_embed,
        "embed images or texts into .npy (+ .ids.txt) or .parquet",
        examples=[
            "cliplab embed --images photos/*.jpg --out vectors.npy",
            "cliplab embed --texts-file captions.txt --out texts.parquet",
        ],
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE")
    p.add_argument("--texts", nargs="+", metavar="TEXT")
    p.add_argument("--texts-file", help="a file with one text per line")
    p.add_argument("--out", required=True, help="output file, .npy or .parquet")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_json(p)
    add_model(p)

    p = add_command(
        commands,
        "similarity",
        cmd_similarity,
        "the cosine-similarity matrix of images and texts",
        examples=['cliplab similarity --images a.jpg b.jpg --texts "a cat" "a dog" --plot matrix.png'],
    )
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", help="save the matrix as a heatmap with thumbnails (PNG)")
    add_json(p)
    add_model(p)


def _labels(args: argparse.Namespace) -> list[str]:
    labels: list[str] = []
    if args.labels:
        labels += [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.labels_file:
        labels += [s.strip() for s in Path(args.labels_file).read_text().splitlines() if s.strip()]
    return labels


def embed_readable(clip, paths: list[str], batch_size: int = 32, progress: bool = False):
    """Embed the image files that can be read; skip the others with the reason (printed to stderr).
    Returns ``(embedded paths, vectors, skipped)``. Raises :class:`CommandError` if none could be read."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..images import ImageLoadError

    kept, chunks, skipped = [], [], []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="embedding images")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        try:
            chunks.append(clip.embed_images(chunk, batch_size=batch_size))
            kept += chunk
        except (ImageLoadError, OSError):  # find the culprits one by one
            for path in chunk:
                try:
                    chunks.append(clip.embed_images([path]))
                    kept.append(path)
                except (ImageLoadError, OSError) as error:
                    skipped.append({"image": path, "reason": str(error)})
                    print(f"skipped {path}: {error}", file=sys.stderr)
        bar.update(len(chunk))
    bar.close()
    if not kept:
        raise CommandError(
            f"none of the {len(paths)} image(s) could be read"
            + (f": {skipped[0]['reason']}" if len(skipped) == 1 else " (reasons above)")
        )
    return kept, np.concatenate(chunks), skipped


def cmd_classify(args: argparse.Namespace) -> int:
    from ..zeroshot import ZeroShotClassifier

    images = image_files(args.images)
    clip = load_pipeline(args, one_shot=len(images) < ONE_SHOT_ITEMS)
    if args.classifier:
        classifier = ZeroShotClassifier.load(args.classifier)
        classifier.check_model(clip)
    else:
        labels = _labels(args)
        if len(labels) < 2:
            raise CommandError("give two or more labels: --labels 'a cat,a dog' or --labels-file FILE")
        classifier = ZeroShotClassifier.from_labels(clip, labels, args.templates, progress=not args.json)
    if args.save_classifier:
        classifier.save(args.save_classifier)
    images, vectors, skipped = embed_readable(clip, images, progress=not args.json and len(images) > 32)
    results = classifier.predict(vectors, top_k=args.top_k)
    if args.json:
        print_json(
            [{"image": image, "predictions": [p.__dict__ for p in preds]} for image, preds in zip(images, results)]
            + [{**s, "predictions": []} for s in skipped]
        )
    else:
        for image, preds in zip(images, results):
            print(image)
            for p in preds:
                print(f"  {p.probability:7.2%}  {p.label}")
    return 0


def _write_embeddings(path: Path, ids: list[str], vectors) -> None:
    import numpy as np

    if path.suffix == ".npy":
        np.save(path, vectors)
        path.with_suffix(".ids.txt").write_text("\n".join(i.replace("\n", " ") for i in ids) + "\n")
    else:  # .parquet (cmd_embed has checked the suffix)
        from ..extras import require

        pa = require("pyarrow", "data", "writing Parquet")
        pq = require("pyarrow.parquet", "data", "writing Parquet")

        table = pa.table(
            {"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}
        )
        pq.write_table(table, path)


def cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".npy", ".parquet"):
        raise CommandError(f"--out must end in .npy or .parquet, got {out.name}")
    texts = list(args.texts or [])
    if args.texts_file:
        texts += [line for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
    if bool(args.images) == bool(texts):
        raise CommandError("give either --images or --texts/--texts-file")
    clip = load_pipeline(args, one_shot=len(args.images or texts) < ONE_SHOT_ITEMS)
    if args.images:
        ids, vectors, _ = embed_readable(clip, image_files(args.images), args.batch_size, progress=True)
    else:
        ids = texts
        vectors = clip.embed_texts(texts, progress=True)
    _write_embeddings(out, ids, vectors)
    print(
        json.dumps({"out": str(out), "count": len(ids), "dim": int(vectors.shape[1])})
        if args.json
        else f"wrote {len(ids)} embeddings of dimension {vectors.shape[1]} to {out}"
    )
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from ..images import load_image

    images = image_files(args.images)
    if not args.texts:
        raise CommandError("give one or more --texts")
    clip = load_pipeline(args, one_shot=len(images) + len(args.texts) < ONE_SHOT_ITEMS)
    pil_images = [load_image(p) for p in images]
    matrix = clip.embed_images(pil_images) @ clip.embed_texts(args.texts).T
    if args.plot:
        from ..plotting import plot_similarity

        plot_similarity(matrix, pil_images, args.texts, args.plot)
    if args.json:
        print_json({"images": images, "texts": args.texts, "cosine": matrix.round(6).tolist()})
    else:
        width = max(len(t) for t in args.texts)
        print(" " * width + "  " + "  ".join(f"{Path(p).name[:10]:>10}" for p in images))
        for j, text in enumerate(args.texts):
            print(f"{text:>{width}}  " + "  ".join(f"{matrix[i, j]:10.4f}" for i in range(len(images))))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
