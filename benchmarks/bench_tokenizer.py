"""Throughput of cliplab's CLIP tokenizer against open_clip's (and HF's, if available).

Run:  python benchmarks/bench_tokenizer.py [--n 10000] [--repeats 3]

Two disjoint sets A and B of synthetic, varied captions are generated with a
fixed seed (mostly English, ~15% with other scripts, emoji, HTML entities,
mojibake or numbers).  Every tokenizer produces a [N, 77] LongTensor.

Columns (strings per second, best of --repeats):
  cold    a freshly constructed tokenizer on set A (empty caches)
  steady  set B right after set A: new strings, but the words are mostly known
          (the usual situation when streaming a caption dataset)
  repeat  set A again (the same strings once more, e.g. a fixed prompt list)

The ratio row is cliplab / open_clip for each column.  Results of cliplab and
open_clip are also checked to be identical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from cliplab.tokenizer import DEFAULT_VOCAB_PATH, Tokenizer

_SUBJECTS = [
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "boy",
    "girl",
    "horse",
    "bird",
    "car",
    "bus",
    "truck",
    "bicycle",
    "train",
    "plane",
    "boat",
    "pizza",
    "cake",
    "sandwich",
    "laptop",
    "phone",
    "book",
    "chair",
    "table",
    "bed",
    "sofa",
    "tree",
    "flower",
    "mountain",
    "beach",
    "street",
    "building",
    "bridge",
    "river",
    "lake",
    "kitchen",
    "bathroom",
    "giraffe",
    "elephant",
    "zebra",
    "sheep",
    "cow",
    "skateboard",
    "surfboard",
    "umbrella",
    "clock",
    "vase",
    "teddy",
    "bear",
]
_ADJECTIVES = [
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "small",
    "large",
    "old",
    "young",
    "happy",
    "wooden",
    "shiny",
    "wet",
    "crowded",
    "empty",
    "colorful",
    "vintage",
    "modern",
    "beautiful",
    "tall",
    "short",
    "brown",
    "orange",
    "cute",
]
_PLACES = [
    "the park",
    "a busy street",
    "the beach",
    "a kitchen",
    "the snow",
    "a field",
    "the city",
    "a table",
    "the water",
    "a living room",
    "the airport",
    "a forest",
    "the sidewalk",
    "a market",
    "the mountains",
]
_VERBS = [
    "sitting on",
    "standing next to",
    "running through",
    "lying in",
    "looking at",
    "parked near",
    "flying over",
    "walking down",
    "playing with",
    "eating",
    "holding",
    "riding",
]
_TEMPLATES = [
    "a photo of a {adj} {subj}",
    "A {adj} {subj} {verb} {place}.",
    "{n} {subj}s {verb} {place}",
    "Close-up of a {subj} {verb} a {adj} {subj2}",
    "a {subj} and a {subj2} {verb} {place}, {adj} day",
    "There is a {adj} {subj} {verb} the {subj2} in {place}",
    "{Adj} {subj} #{subj2} @{place_tag} ({year})",
    "Stock image: {adj} {subj} {verb} {place} - {n}x{n2} px",
]
_EXTRA = [
    "一只猫坐在垫子上",
    "猫が窓辺で寝ている",
    "Кошка сидит на ковре",
    "قطة تجلس على السجادة",
    "고양이가 매트 위에 앉아 있다",
    "बिल्ली चटाई पर बैठी है",
    "แมวนั่งอยู่บนเสื่อ",
    "חתול יושב על השטיח",
    "café crème",
    "Straße in München",
    "niño pequeño",
    "😀",
    "👨‍👩‍👧‍👦",
    "🇯🇵🇺🇸",
    "❤️",
    "fish &amp; chips",
    "&lt;b&gt;sale&lt;/b&gt;",
    "&#x1F600;",
    "CafÃ©",
    "donâ€™t",
    "“quoted”",
    "1234567890",
    "50% off!!!",
    "ｆｕｌｌｗｉｄｔｈ",
]


def make_captions(n: int, seed: int) -> list[str]:
    """n synthetic captions; about 15% contain a non-ASCII or HTML fragment."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        caption = rng.choice(_TEMPLATES).format(
            adj=rng.choice(_ADJECTIVES),
            Adj=rng.choice(_ADJECTIVES).capitalize(),
            subj=rng.choice(_SUBJECTS),
            subj2=rng.choice(_SUBJECTS),
            verb=rng.choice(_VERBS),
            place=rng.choice(_PLACES),
            place_tag=rng.choice(_PLACES).replace(" ", ""),
            n=rng.randint(2, 2000),
            n2=rng.randint(2, 2000),
            year=rng.randint(1950, 2025),
        )
        if rng.random() < 0.15:
            caption += " " + rng.choice(_EXTRA)
        if rng.random() < 0.05:
            caption = caption.upper()
        out.append(caption)
    return out


def _best_rate(
    fn: Callable[[Sequence[str]], object],
    texts: Sequence[str],
    repeats: int,
    fresh: Callable[[], Callable[[Sequence[str]], object]] | None = None,
) -> float:
    """Best strings/s over `repeats` runs; with `fresh`, each run uses a new instance."""
    best = float("inf")
    for _ in range(repeats):
        f = fresh() if fresh is not None else fn
        t0 = time.perf_counter()
        f(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def _hf_fast_tokenizer():
    """CLIPTokenizerFast built offline from the bundled vocabulary, or None.

    transformers >= 5 takes the vocabulary and merges directly; older versions
    need vocab.json / merges.txt, which are written to a temporary folder.
    HF's fast tokenizer normalises text differently (no ftfy), so its ids are
    not compared with the reference; only its speed is reported.
    """
    try:
        from transformers import CLIPTokenizerFast
    except Exception as exc:
        print(f"  (transformers not importable: {exc}; HF skipped)")
        return None
    vocab = {t: i for i, t in enumerate(Tokenizer()._id_to_token)}
    with gzip.open(DEFAULT_VOCAB_PATH, "rt", encoding="utf-8") as f:
        merge_lines = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    expected = [49406, 3306, 1002, 49407]
    errors = []
    for style in ("objects", "files"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if style == "objects":
                    hf = CLIPTokenizerFast(vocab=vocab, merges=[tuple(m.split()) for m in merge_lines])
                else:
                    tmp = tempfile.mkdtemp(prefix="cliplab-hf-clip-")
                    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
                        json.dump(vocab, f, ensure_ascii=False)
                    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
                        f.write("#version: 0.2\n" + "\n".join(merge_lines) + "\n")
                    hf = CLIPTokenizerFast(
                        vocab_file=os.path.join(tmp, "vocab.json"), merges_file=os.path.join(tmp, "merges.txt")
                    )
            ids = hf("hello world")["input_ids"]
            if ids == expected:
                break
            errors.append(f"{style}: 'hello world' -> {ids[:6]}")
        except Exception as exc:
            errors.append(f"{style}: {type(exc).__name__}: {exc}")
    else:
        print(f"  (HF CLIPTokenizerFast not constructible offline; skipped: {'; '.join(errors)})")
        return None

    def run(texts):
        return hf(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="captions per set (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell, best kept (default 3)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    set_a = make_captions(args.n, seed=1)
    set_b = make_captions(args.n, seed=2)
    n_non_ascii = sum(not s.isascii() for s in set_a)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}")
    print(
        f"{len(set_a)} captions per set, {n_non_ascii / len(set_a):.0%} non-ASCII, "
        f"mean {sum(map(len, set_a)) / len(set_a):.0f} chars; best of {args.repeats}"
    )

    rows: dict[str, tuple[float, float, float]] = {}

    def measure(name: str, factory: Callable[[], Callable[[Sequence[str]], object]]) -> None:
        cold = _best_rate(None, set_a, args.repeats, fresh=factory)
        inst = factory()
        inst(set_a)
        steady = len(set_b) / _timed(inst, set_b)  # set B once, right after A
        repeat = _best_rate(inst, set_a, args.repeats)
        rows[name] = (cold, steady, repeat)

    measure("cliplab", lambda: Tokenizer())

    try:
        from open_clip.tokenizer import SimpleTokenizer
    except Exception as exc:
        print(f"open_clip not importable ({exc}); only cliplab measured")
        SimpleTokenizer = None
    if SimpleTokenizer is not None:
        ours = Tokenizer()
        ref = SimpleTokenizer()
        for texts in (set_a, set_b):
            if not torch.equal(ours(texts), ref(texts)):
                print("ERROR: cliplab and open_clip disagree", file=sys.stderr)
                return 1
        print("cliplab output == open_clip output on both sets")
        measure("open_clip", lambda: SimpleTokenizer())

    hf = _hf_fast_tokenizer()
    if hf is not None:
        measure("HF CLIPTokenizerFast", lambda: hf)  # no per-instance cache to reset

    header = f"{'tokenizer':<22} {'cold':>12} {'steady':>12} {'repeat':>12}"
    print()
    print("strings/s (higher is better)")
    print(header)
    print("-" * len(header))
    for name, (cold, steady, repeat) in rows.items():
        print(f"{name:<22} {cold:>12,.0f} {steady:>12,.0f} {repeat:>12,.0f}")
    if "open_clip" in rows:
        c, o = rows["cliplab"], rows["open_clip"]
        print(f"{'cliplab / open_clip':<22} {c[0] / o[0]:>11.2f}x {c[1] / o[1]:>11.2f}x {c[2] / o[2]:>11.2f}x")
    return 0


def _timed(fn: Callable[[Sequence[str]], object], texts: Sequence[str]) -> float:
    t0 = time.perf_counter()
    fn(texts)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
