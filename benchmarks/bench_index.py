"""End-to-end indexing speed: ``cliplab index`` on a folder of JPEG photos against the model alone.

The model-only figure embeds already-preprocessed tensors (no file reading, no decoding); the
end-to-end figure is what ``index_paths`` achieves on the files (reading, hashing, decoding and
resizing, plus the store's commits). Each round indexes the folder into a new store between two
model-only runs, and its ratio compares it with their mean. Goal: ratio ≥ 0.8.

The photos are synthetic 1024x768 JPEGs (quality 90) with gradients, shapes and sensor-like noise, so
they decode like camera photos do. The model defaults to ViT-B/32 with random weights (the cost does
not depend on the weights).

    python benchmarks/bench_index.py                  # 256 photos, ViT-B/32, 3 rounds
    python benchmarks/bench_index.py --photos 384 --workers 1
    python benchmarks/bench_index.py --model cliplab-mini --photos 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import cliplab
from cliplab.index import index_paths
from cliplab.model import CLIP, get_preset


def write_photos(folder: Path, n: int, size=(1024, 768), seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([a * xx / size[0], b * yy / size[1], c * (xx + yy) / sum(size)], axis=-1) * 255
        base += rng.normal(0, 6, base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, size[0] - 100), rng.integers(0, size[1] - 100)
            box = (int(x0), int(y0), int(x0 + rng.integers(40, 400)), int(y0 + rng.integers(40, 300)))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"photo{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def model_only_throughput(pipeline, paths: list[Path], batch_size: int) -> float:
    pixels = pipeline.preprocess.batch(paths[:batch_size])
    pipeline.encode_image(pixels[:2])  # warm-up
    n, start = 0, time.perf_counter()
    for _ in range(max(1, len(paths) // batch_size)):
        pipeline.encode_image(pixels)
        n += len(pixels)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint or name (default: ViT-B/32 with random weights)")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (default: cliplab's default, threads between the model's turns)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="indexing runs, each between two model-only runs")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if args.model:
        pipeline = cliplab.load(args.model, device="cpu")
    else:
        torch.manual_seed(0)
        pipeline = cliplab.Pipeline(CLIP(get_preset("ViT-B/32")).eval(), device="cpu", name="ViT-B-32-random")
    work = Path(tempfile.mkdtemp(prefix="cliplab-bench-index-"))
    rounds = []
    try:
        paths = write_photos(work / "photos", args.photos)
        for _ in range(args.rounds):
            # The model alone just before and just after each indexing run: on a shared machine its speed
            # drifts by 10-20 % between minutes, and the ratio should compare like with like.
            before = model_only_throughput(pipeline, paths, args.batch_size)
            shutil.rmtree(work / "store", ignore_errors=True)
            report = index_paths(
                pipeline,
                work / "store",
                [work / "photos"],
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
            )
            after = model_only_throughput(pipeline, paths, args.batch_size)
            model_only = (before + after) / 2
            rounds.append(
                {
                    "model_only_images_per_s": round(model_only, 1),
                    "index_images_per_s": round(report.images_per_second, 1),
                    "ratio": round(report.images_per_second / model_only, 3),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'model':<18} {'photos':>6} {'round':>5} {'model only':>12} {'cliplab index':>14} {'ratio':>6}")
    for number, r in enumerate(rounds, 1):
        print(
            f"{pipeline.name:<18} {args.photos:>6} {number:>5} {r['model_only_images_per_s']:>10.1f}/s "
            f"{r['index_images_per_s']:>12.1f}/s {r['ratio']:>6.2f}"
        )
    median = float(np.median([r["ratio"] for r in rounds]))
    print(f"median ratio {median:.2f} (goal >= 0.8)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": pipeline.name,
                    "photos": args.photos,
                    "workers": args.workers,
                    "rounds": rounds,
                    "median_ratio": round(median, 3),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
