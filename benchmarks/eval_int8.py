"""int8 quality on held-out data, for any model: per-row cosine to fp32, and the held-out zero-shot and
retrieval decisions that change against fp32, for bf16, int8 (calibrated) and int8 per token.

    python benchmarks/eval_int8.py [--model cliplab-mini | PATH | random:ViT-B/32] [--corpus DIR] [--limit N]

The corpus is a sample corpus (``cliplab data sample-corpus`` / ``cliplab demo``; default
``$CLIPLAB_HOME/corpus``): zero-shot on ``zeroshot_test.jsonl`` against every concept with the demo's
four templates, retrieval on ``retrieval_test.jsonl``. int8 is calibrated on the training split
(``--calibration-images`` images and as many captions), never on held-out items.

Also printed: the decisions that change when the two sides of a search come from different precisions
(a store indexed in fp32 queried in int8, and the reverse), which is what decides whether a store's
model fingerprint must record the precision.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import cliplab
from cliplab.evaluate import class_names_for, read_items
from cliplab.paths import cliplab_home
from cliplab.zeroshot import ZeroShotClassifier

TEMPLATES = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
PRECISIONS = ("fp32", "bf16", "int8", "int8-dynamic")


def load(model: str, precision: str) -> cliplab.Pipeline:
    base = "int8" if precision.startswith("int8") else precision
    if model.startswith("random:"):
        from cliplab.model import CLIP, get_preset

        torch.manual_seed(0)
        return cliplab.Pipeline(CLIP(get_preset(model.split(":", 1)[1])).eval(), device="cpu", precision=base)
    return cliplab.load(model, device="cpu", precision=base)


def spread(items: list, n: int) -> list:
    return items if n <= 0 or len(items) <= n else [items[i * len(items) // n] for i in range(n)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cliplab-mini", help="a model name or path, or random:PRESET")
    parser.add_argument("--corpus", default=None, help="sample corpus folder (default: $CLIPLAB_HOME/corpus)")
    parser.add_argument("--limit", type=int, default=0, help="held-out images per task (0: all)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = parser.parse_args()
    corpus = Path(args.corpus) if args.corpus else cliplab_home() / "corpus"
    zeroshot = spread(read_items(corpus / "zeroshot_test.jsonl"), args.limit)
    retrieval = spread(read_items(corpus / "retrieval_test.jsonl"), args.limit)
    classes = class_names_for(corpus / "zeroshot_test.jsonl") or sorted({i["concept"] for i in zeroshot})
    train = spread(read_items(corpus / "train.jsonl"), args.calibration_images)

    results: dict[str, dict] = {}
    for precision in ["fp32", *[p for p in args.precisions if p != "fp32"]]:
        clip = load(args.model, precision)
        start = time.perf_counter()
        if precision == "int8":
            clip.calibrate([t["image"] for t in train], [t["caption"] for t in train])
        calibrated = time.perf_counter() - start
        classifier = ZeroShotClassifier.from_labels(clip, classes, TEMPLATES)
        results[precision] = {
            "zeroshot_images": clip.embed_images([i["image"] for i in zeroshot]),
            "classes": classifier.weights,
            "retrieval_images": clip.embed_images([i["image"] for i in retrieval]),
            "captions": clip.embed_texts([i["caption"] for i in retrieval]),
            "prompts": clip.embed_texts([t.format(c) for c in classes[:256] for t in TEMPLATES]),
            "actual": clip.precision,
            "calibration s": calibrated,
        }

    exact = results["fp32"]
    concept_index = {c: i for i, c in enumerate(classes)}
    truth = np.array([concept_index.get(i["concept"], -1) for i in zeroshot])

    def decisions(r_images: dict, r_texts: dict) -> dict[str, np.ndarray]:
        sim = r_images["retrieval_images"] @ r_texts["captions"].T
        return {
            "zeroshot": (r_images["zeroshot_images"] @ r_texts["classes"].T).argmax(1),
            "i2t": sim.argmax(1),
            "t2i": sim.argmax(0),
        }

    reference = decisions(exact, exact)
    print(
        f"\n{args.model}: zero-shot on {len(zeroshot)} held-out images x {len(classes)} classes, retrieval on "
        f"{len(retrieval)} held-out pairs; int8 calibrated on {len(train)} training images and captions; "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{'precision':>13} {'cos img min':>11} {'mean':>8} {'cos txt min':>11} {'mean':>8} "
        f"{'zero-shot changed':>17} {'top-1':>6} {'i->t changed':>12} {'t->i changed':>12} {'R@1 i->t':>8}"
    )
    for precision, r in results.items():
        images = np.concatenate([r["zeroshot_images"], r["retrieval_images"]])
        texts = np.concatenate([r["captions"], r["prompts"]])
        cos_img = cosines(images, np.concatenate([exact["zeroshot_images"], exact["retrieval_images"]]))
        cos_txt = cosines(texts, np.concatenate([exact["captions"], exact["prompts"]]))
        d = decisions(r, r)
        changed = {k: int((d[k] != reference[k]).sum()) for k in d}
        top1 = float((d["zeroshot"] == truth).mean())
        r_at_1 = float((d["i2t"] == np.arange(len(retrieval))).mean())
        name = precision if r["actual"] == precision.split("-")[0] else f"{precision}({r['actual']})"
        print(
            f"{name:>13} {cos_img.min():11.5f} {cos_img.mean():8.5f} {cos_txt.min():11.5f} {cos_txt.mean():8.5f} "
            f"{changed['zeroshot']:>8} ({changed['zeroshot'] / len(zeroshot):5.1%}) {top1:6.1%} "
            f"{changed['i2t']:>12} {changed['t2i']:>12} {r_at_1:8.1%}"
        )
    for precision in [p for p in results if p.startswith("int8")]:
        r = results[precision]
        for label, images, texts in (
            ("fp32 images, int8 texts", exact, r),
            ("int8 images, fp32 texts", r, exact),
        ):
            d = decisions(images, texts)
            print(
                f"{precision:>13} {label}: zero-shot {int((d['zeroshot'] != reference['zeroshot']).sum())} changed, "
                f"text->image {int((d['t2i'] != reference['t2i']).sum())}, image->text "
                f"{int((d['i2t'] != reference['i2t']).sum())} of {len(retrieval)}"
            )
    if "int8" in results:
        print(f"calibration took {results['int8']['calibration s']:.0f} s")


if __name__ == "__main__":
    main()
