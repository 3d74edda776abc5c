"""Are CLIP-guided images recognisable to a model that did not make them?

    python benchmarks/eval_generation.py --judge RUN_B/model [--model cliplab-mini] [--prompts 24]
        [--steps 80] [--out out/eval_generation]

Model A (``--model``, default cliplab-mini) generates one image per prompt, ``an emoji of
CONCEPT.`` (the mean of the zero-shot templates' embeddings) for ``--prompts`` concepts drawn at
random (seeded) from the held-out OpenMoji concepts. Model B (``--judge``: the same recipe trained
with another seed) then classifies each image zero-shot among all the held-out concepts
(``concepts.json``); a prompt is recognised when its concept is B's top-1 (top-5). Chance is 1/classes
(5/classes); with few prompts the top-50 rate and the median rank of the true concept say more.
A's own rate on its images is printed for contrast only: a model judging its own
output proves nothing. For reference, B's rate on the real OpenMoji drawings of the same concepts.

Generated images are cached in ``--out`` (re-runs with the same settings only classify), with a
contact sheet ``sheet.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cliplab.api import load
from cliplab.evaluate import read_items
from cliplab.generate import generate
from cliplab.paths import cliplab_home
from cliplab.zeroshot import ZeroShotClassifier

TEMPLATES = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]


def recognition(pipeline, classifier: ZeroShotClassifier, images: list, targets: list[int]) -> dict:
    """Top-1 / top-5 rate of ``images`` being classified as their target class, and the ranks."""
    probs = classifier.probabilities(pipeline.embed_images(images))
    ranks = [int((row > row[t]).sum()) for row, t in zip(probs, targets)]
    return {
        "top1": float(np.mean([r < 1 for r in ranks])),
        "top5": float(np.mean([r < 5 for r in ranks])),
        "top50": float(np.mean([r < 50 for r in ranks])),
        "median_rank": float(np.median(ranks)) + 1,
        "ranks": [r + 1 for r in ranks],
    }


def contact_sheet(images: list[Image.Image], captions: list[str], path: Path, tile: int = 96) -> None:
    columns = 8
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * tile, (i // columns) * (tile + 12)
        sheet.paste(image.resize((tile, tile), Image.BICUBIC), (x, y + 12))
        draw.text((x + 2, y), caption[:16], fill=(0, 0, 0))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", help="model B: the same recipe, another seed (without it: only generate)")
    parser.add_argument("--model", default=None, help="model A, the generator (default: cliplab-mini)")
    parser.add_argument("--corpus", default=None, help="sample corpus folder (default: $CLIPLAB_HOME/corpus)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--cutouts", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="picks the concepts; prompt i is generated with seed i")
    parser.add_argument("--out", default="out/eval_generation")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus) if args.corpus else cliplab_home() / "corpus"
    held_out = read_items(corpus / "zeroshot_test.jsonl")
    classes = json.loads((corpus / "concepts.json").read_text())
    by_concept = {item["concept"]: item for item in held_out if item["concept"] in classes}
    concepts = random.Random(args.seed).sample(sorted(by_concept), args.prompts)

    generator = load(args.model)
    images, seconds = [], 0.0
    for i, concept in enumerate(concepts):
        slug = "".join(ch if ch.isalnum() else "-" for ch in concept)[:40]
        path = out / f"{i:03d}_{slug}_s{args.steps}_c{args.cutouts}.png"
        if not path.is_file():
            start = time.perf_counter()
            result = generate(
                generator,
                [t.format(concept) for t in TEMPLATES],
                steps=args.steps,
                seed=i,
                cutouts_per_step=args.cutouts,
            )
            seconds += time.perf_counter() - start
            result.image.save(path)
            print(
                f"{i + 1}/{len(concepts)} {concept!r}: cosine {result.similarities[0]:.3f} -> "
                f"{result.final_similarity:.3f}",
                flush=True,
            )
        images.append(Image.open(path).convert("RGB"))
    contact_sheet(images, concepts, out / "sheet.png")

    if not args.judge:
        return
    targets = [classes.index(c) for c in concepts]
    judge = load(args.judge)
    b = recognition(judge, ZeroShotClassifier.from_labels(judge, classes, TEMPLATES), images, targets)
    b_real = recognition(
        judge,
        ZeroShotClassifier.from_labels(judge, classes, TEMPLATES),
        [by_concept[c]["image"] for c in concepts],
        targets,
    )
    a_self = recognition(generator, ZeroShotClassifier.from_labels(generator, classes, TEMPLATES), images, targets)
    chance = {
        "top1": 1 / len(classes),
        "top5": 5 / len(classes),
        "top50": 50 / len(classes),
        "median_rank": (len(classes) + 1) / 2,
    }
    summary = {
        "generator": generator.name,
        "judge": args.judge,
        "prompts": len(concepts),
        "classes": len(classes),
        "steps": args.steps,
        "cutouts": args.cutouts,
        "judge_on_generated": b,
        "chance": chance,
        "generator_on_its_own_images (not evidence)": a_self,
        "judge_on_real_openmoji": b_real,
        "concepts": concepts,
        "generation_seconds": round(seconds, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n{len(concepts)} generated images (model A = {generator.name}, {args.steps} steps), classified among "
        f"{len(classes)} held-out concepts"
    )
    print(f"  {'':46} {'top-1':>7} {'top-5':>7} {'top-50':>7} {'median rank':>12}")
    for name, r in [
        ("model B (independent) on the generated images", b),
        ("chance", chance),
        ("model A on its own images (not evidence)", a_self),
        ("model B on the real OpenMoji drawings", b_real),
    ]:
        print(f"  {name:46} {r['top1']:7.1%} {r['top5']:7.1%} {r['top50']:7.1%} {r['median_rank']:12.0f}")
    print(f"results: {out / 'results.json'}, images: {out / 'sheet.png'}")


if __name__ == "__main__":
    main()
