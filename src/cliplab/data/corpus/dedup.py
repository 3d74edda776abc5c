"""Near-duplicate renderings across the corpus's sets: the same art reached through two packages (the
Noto font and Noto's SVGs, a set and its older version) is trained on once, and no training image is
a near-copy of a held-out one (which would leak the test set in under another name).

An image's fingerprint is a 64-bit difference hash of its 9 x 8 grayscale thumbnail plus its mean
colour in 4 levels per channel; two images are near-duplicates when the colours agree and the hashes
differ in at most :data:`MAX_BITS` bits. Images are compared within one concept (emoji: the same
codepoint; Openclipart: the same title) and, for exact hash matches, across the whole corpus.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

MAX_BITS = 4

__all__ = ["MAX_BITS", "deduplicate", "image_fingerprint"]


def image_fingerprint(path: str | Path) -> tuple[int, tuple[int, int, int]]:
    """(difference hash, coarse mean colour) of an image file."""
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colour = tuple(int(v) // 64 for v in ImageStat.Stat(rgb).mean)
        small = rgb.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
        pixels = small.tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (pixels[row * 9 + col] > pixels[row * 9 + col + 1])
    return bits, (colour[0], colour[1], colour[2])


def _near(a: tuple[int, tuple[int, int, int]], b: tuple[int, tuple[int, int, int]]) -> bool:
    return a[1] == b[1] and (a[0] ^ b[0]).bit_count() <= MAX_BITS


def deduplicate(items: list[dict[str, Any]], root: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``items`` without the training items that nearly duplicate a held-out item or an earlier training
    item of another source (held-out items are never removed); and the counts of what was removed,
    per ``source:reason``."""
    fingerprints = {id(item): image_fingerprint(root / item["image"]) for item in items}
    held_out = [i for i in items if i["split"] != "train"]
    held_by_concept: dict[str, list] = defaultdict(list)
    held_exact: set[tuple[int, tuple[int, int, int]]] = set()
    for item in held_out:
        held_by_concept[item["concept"]].append(fingerprints[id(item)])
        held_exact.add(fingerprints[id(item)])
    kept_by_concept: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
    kept_exact: dict[tuple[int, tuple[int, int, int]], str] = {}
    removed: Counter[str] = Counter()
    kept = []
    for item in items:
        if item["split"] != "train":
            kept.append(item)
            continue
        fp = fingerprints[id(item)]
        if fp in held_exact or any(_near(fp, other) for other in held_by_concept.get(item["concept"], ())):
            removed[f"{item['source']}:near_copy_of_held_out"] += 1
            continue
        same = kept_by_concept[item["concept"]]
        if kept_exact.get(fp, item["source"]) != item["source"] or any(
            source != item["source"] and _near(fp, other) for source, other in same
        ):
            removed[f"{item['source']}:near_copy_in_another_set"] += 1
            continue
        same.append((item["source"], fp))
        kept_exact.setdefault(fp, item["source"])
        kept.append(item)
    return kept, dict(sorted(removed.items()))
