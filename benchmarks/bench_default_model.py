"""The default model, cliplab-lite, side by side with its peers, in one run:

1. **Locked-tower training, cliplab against open_clip.** The same two pretrained towers
   (EfficientNet-Lite0 through timm, all-MiniLM-L6-v2 through Hugging Face transformers), the same
   linear heads, locked the same way (trunks frozen, heads and temperature learn), the same data,
   hyper-parameters and precision. cliplab runs its recipe (features cached once, then the heads
   train); open_clip gets the same wall-clock budget (at batch 256 by default, so that it makes
   more updates in it than at the recipe's 1024), training its own model (cliplab's OpenCLIP
   export of the untrained model, loaded by ``open_clip.create_model_and_transforms``) with its
   ``lock_image_tower`` / ``lock_text_tower``, its train transform and its ``ClipLoss`` in a plain loop
   (its ``open_clip_train`` script needs webdataset/CSV plumbing and a hub for the towers, so the loop
   is written here; every model call is open_clip's). Both results are evaluated by the same code
   (``cliplab.evaluate``, fp32) on the held-out sets.
2. **Embedding throughput** of cliplab-lite beside cliplab-mini's architecture (ViT-nano, 64 px; random
   weights, which do not change its speed), images/s and texts/s, best of ``--rounds``, alternating.

    python benchmarks/bench_default_model.py [--corpus DIR] [--rounds 2] [--skip-open-clip]

The corpus defaults to ``$CLIPLAB_HOME/corpus`` (``make demo`` builds it).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch
from timing import best_time

import cliplab
from cliplab.evaluate import evaluate, read_items
from cliplab.paths import cliplab_home
from cliplab.train.config import load_config
from cliplab.train.loop import train

TEMPLATES = ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]


def recipe(name: str) -> Path:
    return Path(str(resources.files("cliplab") / "recipes" / name))


def figures(pipeline: cliplab.Pipeline, corpus: Path) -> dict:
    found = evaluate(pipeline, str(corpus / "zeroshot_test.jsonl"), str(corpus / "retrieval_test.jsonl"), TEMPLATES)
    z, r = found["zeroshot"], found["retrieval"]
    return {
        "zeroshot_top1": z["top1"],
        "zeroshot_top5": z["top5"],
        "image_to_text_R@10": r["image_to_text_R@10"],
        "text_to_image_R@10": r["text_to_image_R@10"],
    }


def run_cliplab(corpus: Path, work: Path) -> dict:
    config = load_config(
        recipe("cliplab-lite.toml"),
        [
            f'data.train=[["{corpus / "train.jsonl"}", 1.0]]',
            'eval.zeroshot=""',
            'eval.retrieval=""',
            f'train.feature_cache_dir="{work / "features"}"',  # a cold cache: its cost is counted
        ],
    )
    start = time.perf_counter()
    result = train(config, work / "cliplab", progress=False)
    seconds = time.perf_counter() - start
    pipeline = cliplab.load(work / "cliplab" / "model", precision="fp32")
    return {
        "system": "cliplab (cached features)",
        "seconds": seconds,
        "steps": result.steps,
        "samples": result.steps * config.train.batch_size,
        **figures(pipeline, corpus),
        "_config": config,
    }


class Pairs(torch.utils.data.Dataset):
    def __init__(self, items: list[dict], transform, tokenizer) -> None:
        self.items, self.transform, self.tokenizer = items, transform, tokenizer

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        item = self.items[i]
        with Image.open(item["image"]) as image:
            pixels = self.transform(image.convert("RGB"))
        return pixels, self.tokenizer([item["caption"]])[0]


def run_open_clip(corpus: Path, work: Path, budget: float, config, batch_size: int) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss

    start = time.perf_counter()
    untrained = cliplab.load(recipe("cliplab-lite.model.toml"), precision="fp32")
    export = untrained.save(work / "open_clip", format="open_clip")
    model, preprocess_train, _ = open_clip.create_model_and_transforms(f"local-dir:{export}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    t = config.train
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "logit_scale" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=t.lr,
        betas=(t.betas[0], t.betas[1]),
        eps=t.eps,
    )
    loss_fn = ClipLoss()
    data = Pairs(read_items(corpus / "train.jsonl"), preprocess_train, tokenizer)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=1,
        generator=torch.Generator().manual_seed(t.seed),
        persistent_workers=True,
    )
    model.train()
    step, trained_for = 0, 0.0
    batches = iter(loader)
    while True:  # until the budget would be exceeded by one more step at the mean pace so far
        elapsed = time.perf_counter() - start
        pace = trained_for / step if step else 0.0
        if step and elapsed + pace > budget:
            break
        planned = max(step + 1, step + int((budget - elapsed) / pace)) if step else 100
        warmup = min(t.warmup_steps, max(1, planned // 10))
        if step < warmup:
            lr = t.lr * (step + 1) / warmup
        else:
            lr = 0.5 * t.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, planned - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        began = time.perf_counter()
        try:
            pixels, tokens = next(batches)
        except StopIteration:
            batches = iter(loader)
            pixels, tokens = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image, text, scale = model(pixels, tokens)
        loss = loss_fn(image.float(), text.float(), scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        trained_for += time.perf_counter() - began
    seconds = time.perf_counter() - start
    weights = next(p for p in export.iterdir() if p.suffix in (".safetensors", ".bin"))
    # the trained tensors over the exported ones (frozen BatchNorm layers drop num_batches_tracked)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        state = {**load_file(str(weights)), **model.state_dict()}
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(weights))
    else:
        state = {**torch.load(weights, weights_only=True), **model.state_dict()}
        torch.save(state, weights)
    pipeline = cliplab.load(export, precision="fp32")  # read back through cliplab, evaluated alike
    return {
        "system": f"open_clip (live, batch {batch_size})",
        "seconds": seconds,
        "steps": step,
        "samples": step * batch_size,
        **figures(pipeline, corpus),
    }


def throughput(corpus: Path, rounds: int) -> list[dict]:
    from cliplab.api import Pipeline
    from cliplab.model import CLIP, get_preset
    from cliplab.preprocess import Preprocessor

    items = read_items(corpus / "zeroshot_test.jsonl")[:256]
    images = [item["image"] for item in items]
    texts = [f"an emoji of {item['concept']}" for item in read_items(corpus / "zeroshot_test.jsonl")[:1024]]
    lite_folder = cliplab_home() / "models" / "cliplab-lite"
    lite = cliplab.load(lite_folder if lite_folder.is_dir() else recipe("cliplab-lite.model.toml"))
    mini = Pipeline(CLIP(get_preset("ViT-nano")).eval(), Preprocessor(image_size=64))
    rows = {name: {"model": name, "images_s": 0.0, "texts_s": 0.0} for name in ("cliplab-lite", "cliplab-mini")}
    for _ in range(rounds):
        for name, pipeline in (("cliplab-lite", lite), ("cliplab-mini", mini)):
            image_s = len(images) / best_time(lambda p=pipeline: p.embed_images(images, batch_size=64), 1)
            text_s = len(texts) / best_time(lambda p=pipeline: p.embed_texts(texts, batch_size=256), 1)
            rows[name]["images_s"] = max(rows[name]["images_s"], image_s)
            rows[name]["texts_s"] = max(rows[name]["texts_s"], text_s)
    rows["cliplab-lite"]["precision"] = lite.precision
    rows["cliplab-mini"]["precision"] = mini.precision
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=cliplab_home() / "corpus")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-open-clip", action="store_true", help="only cliplab's training and the throughput")
    parser.add_argument(
        "--open-clip-batch",
        type=int,
        default=256,
        help="open_clip's batch: smaller than the recipe's 1024 so that it gets more updates in the budget",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.corpus / "train.jsonl").is_file():
        raise SystemExit(f"no sample corpus in {args.corpus}: run `make demo` first, or pass --corpus")
    results: dict = {"training": [], "throughput": []}
    with tempfile.TemporaryDirectory(prefix="bench-default-model-") as tmp:
        work = Path(tmp)
        ours = run_cliplab(args.corpus, work)
        config = ours.pop("_config")
        results["training"].append(ours)
        print(f"cliplab: {json.dumps(ours)}", flush=True)
        if not args.skip_open_clip:
            results["training"].append(run_open_clip(args.corpus, work, ours["seconds"], config, args.open_clip_batch))
    print("\nlocked-tower training, same towers, data and budget (held-out figures, fp32):")
    print(
        f"{'system':28} {'wall s':>7} {'steps':>6} {'samples':>8} {'zs top-1':>9} {'zs top-5':>9} {'i->t R@10':>10} {'t->i R@10':>10}"
    )
    for row in results["training"]:
        print(
            f"{row['system']:28} {row['seconds']:7.0f} {row['steps']:6d} {row['samples']:8d} "
            f"{row['zeroshot_top1']:9.1%} {row['zeroshot_top5']:9.1%} {row['image_to_text_R@10']:10.1%} "
            f"{row['text_to_image_R@10']:10.1%}"
        )
    results["throughput"] = throughput(args.corpus, args.rounds)
    print(f"\nembedding throughput (best of {args.rounds} rounds, default precision):")
    for row in results["throughput"]:
        print(
            f"  {row['model']:13} {row['precision']:5} images/s {row['images_s']:7.1f}   texts/s {row['texts_s']:7.1f}"
        )
    lite, mini = results["throughput"]
    print(
        f"  cliplab-lite / cliplab-mini: images {lite['images_s'] / mini['images_s']:.2f}x, "
        f"texts {lite['texts_s'] / mini['texts_s']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
