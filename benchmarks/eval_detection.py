"""Zero-shot detection on data the model never trained on: canvases of held-out OpenMoji emoji.

    python benchmarks/eval_detection.py [--model cliplab-mini] [--canvases 60] [--per-canvas 3]
        [--size 256] [--seed 0] [--out out/eval_detection] [--save-canvases 4]

Each canvas pastes ``--per-canvas`` distinct OpenMoji emoji (the corpus's held-out style:
``zeroshot_test.jsonl``), re-rendered from their SVG sources with transparency at random sizes
(22-45 % of the canvas side) and random non-overlapping positions, on a varied background (pastel
colour, two-colour gradient, stripes or noise). Every emoji on a canvas is one query, its concept
name (``cliplab.detect.detect``, default settings); a query is a hit when its best box has
IoU >= 0.5 with the emoji's true box. Baselines, for the same queries:

* random box: a square whose side is drawn from the true boxes' sides, placed uniformly
  (1,000 draws per query);
* random window: one of the detector's own sliding windows, drawn uniformly;
* best window (the ceiling of the window grid): the fraction of queries any window could hit;
* "another emoji": how often the best box lands on a different emoji of the canvas instead.

Prints a table and writes ``results.json`` (and a few canvases with their truth) into ``--out``.
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
from cliplab.data.corpus.emoji import load_iconify
from cliplab.data.corpus.render import rsvg
from cliplab.data.corpus.sources import find_sources
from cliplab.detect import box_iou, detect, sliding_windows
from cliplab.evaluate import read_items
from cliplab.paths import cliplab_home


def background(rng: random.Random, size: int) -> Image.Image:
    """A varied canvas background: pastel colour, gradient, stripes or noise."""

    def colour() -> tuple[int, int, int]:
        return tuple(rng.randint(90, 255) for _ in range(3))  # type: ignore[return-value]

    kind = rng.choice(["plain", "gradient", "stripes", "noise"])
    if kind == "plain":
        return Image.new("RGB", (size, size), colour())
    if kind == "gradient":
        a, b = np.array(colour(), float), np.array(colour(), float)
        t = np.linspace(0, 1, size)[:, None, None]
        rows = (a * (1 - t) + b * t).astype(np.uint8)
        picture = Image.fromarray(np.repeat(rows, size, axis=1))
        return picture.rotate(rng.choice([0, 90, 180, 270]))
    if kind == "stripes":
        picture = Image.new("RGB", (size, size), colour())
        draw, other, width = ImageDraw.Draw(picture), colour(), rng.randint(8, 32)
        for x in range(-size, size, 2 * width):
            draw.polygon([(x, 0), (x + width, 0), (x + width + size, size), (x + size, size)], fill=other)
        return picture
    base = np.array(colour(), float)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 25, (size // 8, size // 8, 3))
    small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.BICUBIC)


def render_emoji(icons, name: str, side: int) -> Image.Image:
    """An OpenMoji icon with transparency, trimmed to its content, its longer side ``side`` px."""
    image = rsvg(None, icons.svg(name), 2 * side).convert("RGBA")
    image = image.crop(image.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox())
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def make_canvas(rng: random.Random, items: list[dict], icons, size: int) -> tuple[Image.Image, list[dict]]:
    """Paste the items' emoji at random non-overlapping places; their true boxes come back."""
    canvas = background(rng, size)
    truth: list[dict] = []
    for item in items:
        for _ in range(200):  # rejection sampling for a free spot
            sprite = render_emoji(
                icons, item["origin"].split(":", 1)[1], rng.randint(int(0.22 * size), int(0.45 * size))
            )
            x, y = rng.randint(0, size - sprite.width), rng.randint(0, size - sprite.height)
            box = [x, y, x + sprite.width, y + sprite.height]
            if not truth or box_iou(np.array([box]), np.array([t["box"] for t in truth])).max() == 0:
                canvas.paste(sprite, (x, y), sprite)
                truth.append({"label": item["concept"], "box": box})
                break
    return canvas, truth


def random_box_hits(
    truth: np.ndarray, sides: np.ndarray, size: int, rng: np.random.Generator, draws: int = 1000
) -> float:
    side = rng.choice(sides, draws)
    x, y = rng.integers(0, size - side + 1), rng.integers(0, size - side + 1)
    boxes = np.stack([x, y, x + side, y + side], axis=1)
    return float((box_iou(truth, boxes)[0] >= 0.5).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: cliplab-mini")
    parser.add_argument("--corpus", default=None, help="sample corpus folder (default: $CLIPLAB_HOME/corpus)")
    parser.add_argument("--canvases", type=int, default=60)
    parser.add_argument("--per-canvas", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-canvases", type=int, default=4)
    parser.add_argument("--out", default="out/eval_detection")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus) if args.corpus else cliplab_home() / "corpus"
    held_out = [item for item in read_items(corpus / "zeroshot_test.jsonl") if item["origin"].startswith("openmoji:")]
    icons = load_iconify(find_sources().iconify["openmoji"], "openmoji")
    clip = load(args.model)
    rng = random.Random(args.seed)

    canvases = []
    for _ in range(args.canvases):
        chosen: dict[str, dict] = {}
        while len(chosen) < args.per_canvas:  # distinct concepts on one canvas
            item = rng.choice(held_out)
            chosen.setdefault(item["concept"], item)
        canvases.append(make_canvas(rng, list(chosen.values()), icons, args.size))

    start = time.perf_counter()
    windows = sliding_windows(args.size, args.size)
    records = []
    for number, (canvas, truth) in enumerate(canvases):
        result = detect(clip, canvas, [t["label"] for t in truth], threshold=0.0, max_boxes=1)
        true_boxes = np.array([t["box"] for t in truth])
        for i, t in enumerate(truth):
            best = result.best(t["label"])
            ious = box_iou(np.array([best.box]), true_boxes)[0]
            records.append(
                {
                    "canvas": number,
                    "label": t["label"],
                    "truth": t["box"],
                    "box": list(best.box),
                    "score": best.score,
                    "iou": float(ious[i]),
                    "other_hit": bool(np.delete(ious, i).max(initial=0) >= 0.5),
                }
            )
        if number < args.save_canvases:
            canvas.save(out / f"canvas_{number}.png")
            (out / f"canvas_{number}.json").write_text(json.dumps(truth, indent=1))
    seconds = time.perf_counter() - start

    truths = np.array([r["truth"] for r in records])
    sides = np.concatenate([truths[:, 2] - truths[:, 0], truths[:, 3] - truths[:, 1]])
    brng = np.random.default_rng(args.seed)
    window_iou = box_iou(truths, windows)
    summary = {
        "model": clip.name,
        "canvases": len(canvases),
        "queries": len(records),
        "canvas_size": args.size,
        "emoji_per_canvas": args.per_canvas,
        "windows_per_canvas": len(windows),
        "hit_rate": float(np.mean([r["iou"] >= 0.5 for r in records])),
        "mean_iou": float(np.mean([r["iou"] for r in records])),
        "random_box_hit_rate": float(np.mean([random_box_hits(t[None], sides, args.size, brng) for t in truths])),
        "random_window_hit_rate": float((window_iou >= 0.5).mean()),
        "best_window_hit_rate": float((window_iou.max(axis=1) >= 0.5).mean()),
        "other_emoji_hit_rate": float(np.mean([r["other_hit"] for r in records])),
        "seconds_per_canvas": seconds / len(canvases),
    }
    (out / "results.json").write_text(json.dumps({"summary": summary, "queries": records}, indent=1))
    print(
        f"zero-shot detection, {summary['model']}: {summary['queries']} queries on {summary['canvases']} "
        f"canvases ({args.size} px, {args.per_canvas} held-out OpenMoji emoji each, {len(windows)} windows)"
    )
    rows = [
        ("detector, best box", summary["hit_rate"]),
        ("random box (same sizes)", summary["random_box_hit_rate"]),
        ("random sliding window", summary["random_window_hit_rate"]),
        ("best box on another emoji", summary["other_emoji_hit_rate"]),
        ("ceiling: best window", summary["best_window_hit_rate"]),
    ]
    print(f"  {'':28} IoU>=0.5 hit rate")
    for name, value in rows:
        print(f"  {name:28} {value:6.1%}")
    print(f"  mean IoU of the best box {summary['mean_iou']:.3f}; {summary['seconds_per_canvas']:.2f} s per canvas")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
