"""CPU inference: cliplab's fp32, fast (bf16, fused) and int8 paths against OpenCLIP, transformers and ONNX
Runtime, on the same random ViT-B/32 weights, in one run.

    python benchmarks/bench_inference.py [--images 64] [--batch 32] [--rounds 2] [--zeroshot CORPUS]

Every system runs in its own subprocess (so its peak RSS is its own), round-robin over ``--rounds``
so background load hits all alike; each keeps its best round. Printed per system: images/s at
``--batch``, texts/s on typical queries (<= 16 tokens), single-query latency p50, the lowest cosine
of its image and text features to cliplab fp32's, and peak RSS. Ratios are against the best
transformers configuration and OpenCLIP's default (fp32); image throughput is also given as a
fraction of the bf16 and the int8 matrix-product limits timed in the same run, and int8 rows against
cliplab bf16. Texts go to each system as its own tokenizer would pass them: OpenCLIP at its fixed 77
positions, transformers padded to the batch's longest text, cliplab as token ids (it stops at the
batch's last end token itself), ONNX Runtime at the exported graph's 77 positions.

``cliplab int8`` is calibrated (``Pipeline.calibrate``) on other random pixels and the query texts
before the run; ``cliplab int8-dynamic`` is the same model without a calibration (per-token scales);
``onnxruntime int8`` runs cliplab's int8 ONNX export (QDQ) in ONNX Runtime's int8 kernels.

``--zeroshot CORPUS`` (a sample corpus with zeroshot_test.jsonl; default: $CLIPLAB_HOME/corpus with
the trained cliplab-mini) also counts the held-out zero-shot top-1 decisions that change between
cliplab fp32 and bf16, fp32 and int8 (calibrated on the corpus's training split), fp32 and int8
per token, and between exact and draft-mode JPEG decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import best_time

SYSTEMS = [
    "cliplab fp32",
    "cliplab auto",
    "cliplab int8",
    "cliplab int8-dynamic",
    "onnxruntime int8",
    "open_clip fp32",
    "open_clip bf16-autocast",
    "transformers fp32-sdpa",
    "transformers fp32-eager",
    "transformers bf16-autocast",
    "transformers bf16-sdpa",
    "transformers bf16-eager",
]
WORDS = [
    "dog",
    "cat",
    "red bicycle",
    "mountain lake at dawn",
    "bus",
    "two children playing football",
    "pizza",
    "old wooden boat",
    "city skyline at night",
    "bird",
    "laptop on a desk",
    "snowy forest",
]


def queries(n: int) -> list[str]:
    """Typical search queries, 4 to 16 tokens."""
    forms = ["{}", "a photo of a {}", "a {} in the rain", "a blurry photo of a {} next to a tree"]
    return [forms[i % len(forms)].format(WORDS[i % len(WORDS)]) for i in range(n)]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ``ru_maxrss`` would count the parent's peak across fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- one system, in a subprocess


def build(system: str, weights: str):
    """(image_fn, text_fn) for a system, each taking tensors and returning float32 features."""
    library, variant = system.split(" ")
    if library == "cliplab":
        import cliplab

        clip = cliplab.load(os.path.join(weights, "oc"), device="cpu", precision=variant.split("-")[0])
        if variant == "int8-dynamic":
            clip.calibration = None
        return clip.encode_image, clip.encode_text
    if library == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        sessions = {
            name: onnxruntime.InferenceSession(
                os.path.join(weights, "onnx_int8", f"{name}_encoder.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for name in ("image", "text")
        }

        def onnx_image(x):
            return torch.from_numpy(sessions["image"].run(None, {"pixels": x.numpy()})[0])

        def onnx_text(ids):
            return torch.from_numpy(sessions["text"].run(None, {"token_ids": ids.numpy()})[0])

        return onnx_image, onnx_text
    if library == "open_clip":
        import open_clip

        model = open_clip.create_model(
            "ViT-B-32-quickgelu", pretrained=os.path.join(weights, "oc", "open_clip_model.safetensors")
        ).eval()
        if variant == "bf16-autocast":

            def autocast(fn):
                def run(x):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return fn(x).float()

                return run

            return autocast(model.encode_image), autocast(model.encode_text)
        return model.encode_image, model.encode_text
    import transformers

    precision, attention = variant.split("-")
    dtype = torch.bfloat16 if precision == "bf16" and attention != "autocast" else torch.float32
    model = transformers.CLIPModel.from_pretrained(
        os.path.join(weights, "hf"),
        torch_dtype=dtype,
        attn_implementation="sdpa" if attention == "autocast" else attention,
    ).eval()

    def features(out):
        return getattr(out, "pooler_output", out)

    def image_fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=attention == "autocast"):
            return features(model.get_image_features(pixel_values=x.to(dtype))).float()

    def text_fn(ids):
        length = int(ids.argmax(dim=-1).max()) + 1  # padding=True: the batch's longest text
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=attention == "autocast"):
            return features(model.get_text_features(input_ids=ids[:, :length])).float()

    return image_fn, text_fn


def worker(system: str, weights: str, data: str, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    inputs = torch.load(data)
    pixels, ids = inputs["pixels"], inputs["ids"]
    rss_before = peak_rss_mb()
    image_fn, text_fn = build(system, weights)
    result: dict = {"system": system}
    with torch.inference_mode():
        image_features = torch.cat([image_fn(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
        seconds = best_time(
            lambda: [image_fn(pixels[i : i + batch]) for i in range(0, len(pixels), batch)], repeats, warm_up=False
        )  # the pass above warmed up
        result["images/s"] = len(pixels) / seconds
        text_batch = 256
        order = torch.argsort(ids.argmax(dim=-1), stable=True)  # grouped by length, as cliplab's embed_texts
        sorted_ids = ids[order]
        text_features = torch.empty(len(ids), image_features.shape[1])
        for i in range(0, len(ids), text_batch):
            text_features[order[i : i + text_batch]] = text_fn(sorted_ids[i : i + text_batch])
        seconds = best_time(
            lambda: [text_fn(sorted_ids[i : i + text_batch]) for i in range(0, len(ids), text_batch)],
            repeats,
            warm_up=False,
        )
        result["texts/s"] = len(ids) / seconds
        latencies = []
        for i in range(20):
            start = time.perf_counter()
            text_fn(ids[i : i + 1])
            latencies.append(time.perf_counter() - start)
        result["query p50 ms"] = 1000 * statistics.median(latencies[5:])
    result["peak RSS MB"] = peak_rss_mb()
    result["RSS before model MB"] = rss_before
    np.save(Path(data).with_name(system.replace(" ", "_") + "_img.npy"), image_features.float().numpy())
    np.save(Path(data).with_name(system.replace(" ", "_") + "_txt.npy"), text_features.float().numpy())
    return result


# --------------------------------------------------------------------------- the whole run


def matmul_limit(dtype: torch.dtype, n: int = 4096) -> float:
    """GFLOP/s of a large matrix product in ``dtype`` on this machine, now (int8: GOP/s of oneDNN's int8
    linear, uint8 activations times prepacked int8 weights, float32 out, as cliplab's int8 layers run it)."""
    if dtype == torch.int8:
        x = torch.randint(0, 255, (n, n), dtype=torch.uint8)
        w = torch.ops.onednn.qlinear_prepack(torch.randint(-127, 127, (n, n), dtype=torch.int8), None)
        scale, zero = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)

        def product():
            torch.ops.onednn.qlinear_pointwise(
                x, 0.02, 128, w, scale, zero, None, 1.0, 0, torch.float32, "none", [], ""
            )

        return 2 * n**3 / best_time(product, 3) / 1e9
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, 3) / 1e9


def image_gflop(model) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.randn(1, 3, model.image_size, model.image_size))
    return counter.get_total_flops() / 1e9


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def run_systems(args: argparse.Namespace, folder: Path) -> None:
    import transformers  # noqa: F401  (fail early when a peer is missing)

    import cliplab
    from cliplab.model import CLIP, get_preset

    torch.manual_seed(0)
    model = CLIP(get_preset("ViT-B/32")).eval()
    pipeline = cliplab.Pipeline(model, device="cpu", precision="fp32")
    pipeline.save(folder / "oc", format="open_clip")
    pipeline.save(folder / "hf", format="huggingface")
    pixels = torch.randn(args.images, 3, model.image_size, model.image_size)
    ids = pipeline.tokenize(queries(args.texts))
    torch.save({"pixels": pixels, "ids": ids}, folder / "inputs.pt")
    gflop = image_gflop(model)
    del model, pipeline
    if any("int8" in system for system in args.systems):  # calibrated on other pixels, stored beside the model
        from cliplab.quantize import calibration_path

        int8 = cliplab.load(folder / "oc", device="cpu", precision="int8")
        generator = torch.Generator().manual_seed(1)
        calibration_pixels = torch.randn(32, 3, int8.model.image_size, int8.model.image_size, generator=generator)
        int8.calibrate(calibration_pixels, queries(args.texts)).save(calibration_path(folder / "oc"))
        if "onnxruntime int8" in args.systems:
            int8.export_onnx(folder / "onnx_int8", int8=True)

    results: dict[str, dict] = {}
    limits, int8_limits = [], []
    for _ in range(args.rounds):
        limits.append(matmul_limit(torch.bfloat16))
        int8_limits.append(matmul_limit(torch.int8))
        for system in args.systems:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    system,
                    "--weights",
                    str(folder),
                    "--data",
                    str(folder / "inputs.pt"),
                    "--batch",
                    str(args.batch),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                print(f"{system} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            old = results.setdefault(system, result)
            for key in ("images/s", "texts/s"):
                old[key] = max(old[key], result[key])
            old["query p50 ms"] = min(old["query p50 ms"], result["query p50 ms"])
    limit, int8_limit = max(limits), max(int8_limits)
    fp32_limit = matmul_limit(torch.float32)

    reference_img = np.load(folder / "cliplab_fp32_img.npy")
    reference_txt = np.load(folder / "cliplab_fp32_txt.npy")
    best_hf = max((r for s, r in results.items() if s.startswith("transformers")), key=lambda r: r["images/s"])
    best_hf_txt = max((r for s, r in results.items() if s.startswith("transformers")), key=lambda r: r["texts/s"])
    open_clip_default = results.get("open_clip fp32")
    bf16 = results.get("cliplab auto")
    print(
        f"\nViT-B/32 ({gflop:.2f} GFLOP/image), random weights, image batch {args.batch}, {args.images} images, "
        f"{args.texts} queries of <= 16 tokens (batches of 256), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; best of {args.rounds} rounds"
    )
    print(
        f"matrix-product limits now: bf16 {limit:.0f} GFLOP/s (= {limit / gflop:.0f} images/s), int8 "
        f"{int8_limit:.0f} GOP/s (= {int8_limit / gflop:.0f} images/s, {int8_limit / limit:.2f}x bf16), "
        f"fp32 {fp32_limit:.0f} GFLOP/s"
    )
    print(
        f"{'system':>26} {'img/s':>7} {'x best HF':>9} {'x OC':>6} {'x bf16':>6} {'of bf16':>7} {'of int8':>7} "
        f"{'cos img':>8} {'txt/s':>7} {'x best HF':>9} {'x bf16':>6} {'p50 ms':>7} {'cos txt':>8} {'peak RSS MB':>11}"
    )
    for system, r in results.items():
        stem = system.replace(" ", "_")
        cos_img = cosine_min(np.load(folder / f"{stem}_img.npy"), reference_img)
        cos_txt = cosine_min(np.load(folder / f"{stem}_txt.npy"), reference_txt)
        x_oc = r["images/s"] / open_clip_default["images/s"] if open_clip_default else float("nan")
        x_bf16 = r["images/s"] / bf16["images/s"] if bf16 else float("nan")
        x_bf16_txt = r["texts/s"] / bf16["texts/s"] if bf16 else float("nan")
        print(
            f"{system:>26} {r['images/s']:7.1f} {r['images/s'] / best_hf['images/s']:9.2f} {x_oc:6.2f} {x_bf16:6.2f} "
            f"{r['images/s'] * gflop / limit:7.0%} {r['images/s'] * gflop / int8_limit:7.0%} {cos_img:8.5f} "
            f"{r['texts/s']:7.0f} {r['texts/s'] / best_hf_txt['texts/s']:9.2f} {x_bf16_txt:6.2f} "
            f"{r['query p50 ms']:7.1f} {cos_txt:8.5f} {r['peak RSS MB']:11.0f}"
        )
    print(
        "x bf16: against cliplab auto (bf16 here); of bf16 / of int8: the share of each matrix-product limit; "
        f"best transformers: images {best_hf['system']}, texts {best_hf_txt['system']}; "
        f"peak RSS includes ~{results[args.systems[0]]['RSS before model MB']:.0f} MB of Python, libraries and "
        "inputs; FLOPs count a multiply-add as 2"
    )


# --------------------------------------------------------------------------- accuracy on the sample corpus


def jpeg_copies(items: list[dict], folder: Path, side: int = 1024) -> list[str]:
    """The held-out images as large JPEG files (composited on white, upscaled to ``side`` px), like photos."""
    from PIL import Image

    from cliplab.images import load_image, to_rgb

    paths = []
    for i, item in enumerate(items):
        image = to_rgb(load_image(item["image"]))
        image = image.resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
        path = folder / f"{i}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def zeroshot_decisions(corpus: Path, model_name: str, folder: Path) -> None:
    import cliplab
    from cliplab.evaluate import class_names_for, read_items
    from cliplab.preprocess import Preprocessor
    from cliplab.zeroshot import ZeroShotClassifier

    items = read_items(corpus / "zeroshot_test.jsonl")
    class_names = class_names_for(corpus / "zeroshot_test.jsonl") or sorted({i["concept"] for i in items})
    templates = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
    images = [item["image"] for item in items]
    train = read_items(corpus / "train.jsonl")
    train = [train[i * len(train) // 512] for i in range(min(512, len(train)))]  # spread over the split
    decisions, embeddings, class_embeddings = {}, {}, {}
    for precision in ("fp32", "bf16", "int8", "int8-dynamic"):
        clip = cliplab.load(model_name, device="cpu", precision=precision.split("-")[0])
        if precision == "int8":
            clip.calibrate([t["image"] for t in train], [t["caption"] for t in train])
        classifier = ZeroShotClassifier.from_labels(clip, class_names, templates)
        embeddings[precision] = clip.embed_images(images)
        class_embeddings[precision] = classifier.weights
        decisions[precision] = (embeddings[precision] @ classifier.weights.T).argmax(axis=1)
    print(f"\nzero-shot on {len(items)} held-out images, {len(class_names)} classes ({model_name}):")
    for precision in ("bf16", "int8", "int8-dynamic"):
        changed = int((decisions["fp32"] != decisions[precision]).sum())
        print(
            f"  fp32 -> {precision:12s} {changed:4d} top-1 decisions changed ({changed / len(items):.1%}); min image "
            f"cosine {cosine_min(embeddings['fp32'], embeddings[precision]):.5f}, min class-embedding cosine "
            f"{cosine_min(class_embeddings['fp32'], class_embeddings[precision]):.5f}"
        )
    print("  (int8 calibrated on 512 training images and their captions; int8-dynamic: no calibration, per token)")

    # Draft-mode JPEG decoding: exact vs reduced-scale decode of the same large JPEG files, fp32 model.
    clip = cliplab.load(model_name, device="cpu", precision="fp32")
    classifier = ZeroShotClassifier.from_labels(clip, class_names, templates)
    paths = jpeg_copies(items, folder)
    exact, draft = clip.preprocess, Preprocessor(clip.preprocess.config, draft=True)
    timing = {}
    for name, pre in (("exact", exact), ("draft", draft)):
        clip.preprocess = pre
        start = time.perf_counter()
        pre.batch(paths)
        timing[name] = len(paths) / (time.perf_counter() - start)
        embeddings[name] = clip.embed_images(paths)
    changed = int(
        (
            (embeddings["exact"] @ classifier.weights.T).argmax(1)
            != (embeddings["draft"] @ classifier.weights.T).argmax(1)
        ).sum()
    )
    print(
        f"1024x768 JPEGs, preprocessing on one core: exact {timing['exact']:.0f} images/s, draft "
        f"{timing['draft']:.0f} images/s; min cosine draft vs exact {cosine_min(embeddings['exact'], embeddings['draft']):.5f}, "
        f"{changed} top-1 decisions changed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS, metavar="SYSTEM")
    parser.add_argument("--zeroshot", default=None, help="sample corpus folder (default: $CLIPLAB_HOME/corpus)")
    parser.add_argument("--model", default="cliplab-mini", help="trained model for --zeroshot")
    parser.add_argument("--skip-systems", action="store_true", help="only the zero-shot and JPEG checks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.weights, args.data, args.batch, repeats=2)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_systems:
            run_systems(args, Path(tmp))
        from cliplab.paths import cliplab_home

        corpus = Path(args.zeroshot) if args.zeroshot else cliplab_home() / "corpus"
        if (corpus / "zeroshot_test.jsonl").is_file():
            (Path(tmp) / "jpeg").mkdir()
            zeroshot_decisions(corpus, args.model, Path(tmp) / "jpeg")
        else:
            print(f"\n(no {corpus / 'zeroshot_test.jsonl'}: zero-shot decisions not checked)")


if __name__ == "__main__":
    main()
