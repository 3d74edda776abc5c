"""Image and text embedding throughput: cliplab vs OpenCLIP vs Hugging Face transformers, on the
same random ViT-B/32 weights, in one run on this machine.

    python benchmarks/bench_embed.py [--arch ViT-B-32] [--images 32] [--batch 32] [--texts 256]

Each system embeds the same pixels and token ids in fp32 under ``torch.inference_mode``; the
printed ratios are cliplab's throughput over each peer's. Before timing, the script checks that all
three give the same features (max abs diff), so the comparison is between equal computations.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def throughput(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--texts", type=int, default=256, help="texts per timed pass")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import open_clip
    import transformers

    import cliplab
    from cliplab.model import CLIP, get_preset

    torch.manual_seed(0)
    ours = CLIP(get_preset(args.arch)).eval()
    reference = open_clip.create_model(f"{args.arch}-quickgelu").eval()
    reference.load_state_dict(ours.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        cliplab.Pipeline(ours, device="cpu").save(folder, format="huggingface")
        hf = transformers.CLIPModel.from_pretrained(folder).eval()

    size = ours.image_size
    pixels = torch.randn(args.images, 3, size, size)
    queries = [f"a photo of a {w} on a sunny day" for w in ("dog", "cat", "bicycle", "red car", "mountain lake")]
    ids = cliplab.tokenize([queries[i % len(queries)] + f" number {i}" for i in range(args.texts)])

    def batched(fn, data):
        return lambda: [fn(data[i : i + args.batch]) for i in range(0, len(data), args.batch)]

    def hf_image(x):
        out = hf.get_image_features(pixel_values=x)
        return getattr(out, "pooler_output", out)

    def hf_text(x):
        out = hf.get_text_features(input_ids=x)
        return getattr(out, "pooler_output", out)

    systems = {
        "cliplab": (ours.encode_image, ours.encode_text),
        "open_clip": (reference.encode_image, reference.encode_text),
        "transformers": (hf_image, hf_text),
    }
    with torch.inference_mode():
        base = [f(pixels[:2]) for f in (ours.encode_image,)] + [ours.encode_text(ids[:4])]
        for name, (image_fn, text_fn) in systems.items():
            diff = max(
                (image_fn(pixels[:2]) - base[0]).abs().max().item(), (text_fn(ids[:4]) - base[1]).abs().max().item()
            )
            print(f"{name:>12}: max abs diff to cliplab {diff:.1e}")
        results = {}
        for name, (image_fn, text_fn) in systems.items():
            results[name] = (
                throughput(batched(image_fn, pixels), args.images, args.repeats),
                throughput(batched(text_fn, ids), args.texts, args.repeats),
            )

    print(f"\n{args.arch}, fp32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'system':>12}  {'images/s':>9}  {'texts/s':>9}  {'cliplab x (img)':>15}  {'cliplab x (txt)':>15}")
    for name, (img, txt) in results.items():
        print(
            f"{name:>12}  {img:9.1f}  {txt:9.1f}  {results['cliplab'][0] / img:15.2f}  {results['cliplab'][1] / txt:15.2f}"
        )


if __name__ == "__main__":
    main()
