"""A real image–caption corpus built from openly licensed art in the package registries.

`build_sample_corpus(OUT)` (CLI: ``cliplab data sample-corpus OUT``) renders

* emoji in eight styles -- Twemoji (CC-BY-4.0), OpenMoji (CC-BY-SA-4.0), Fluent Emoji Flat (MIT),
  Noto Emoji and its version 1 (Apache-2.0), FxEmoji (Apache-2.0) and EmojiOne 1 (CC-BY-SA-4.0) from
  the ``@iconify-json/*`` npm tarballs, plus the Debian Noto Color Emoji font (OFL-1.1) -- captioned from the Unicode CLDR English annotations (name + keywords);
* Openclipart (Debian ``openclipart-svg``, public domain), captioned from each SVG's RDF metadata
  (title, description, keywords), after named filter rules drop collection titles, stars, gradients,
  patterns and duplicates; near-duplicate renderings across sets, and training images that nearly
  copy a held-out one, are dropped (:mod:`~cliplab.data.corpus.dedup`);

into ``OUT/images/<source>/<id>.png`` with ``pairs.jsonl`` and per-split files. Splits: every
OpenMoji item is ``zeroshot_test`` (an unseen style; ``concepts.json`` lists its concepts that also
appear in a training style), a seeded slice of ~500 Openclipart items with unique titles is
``retrieval_test``, everything else is ``train``.

The art is found by :mod:`cliplab.data.corpus.sources` (installed by ``cliplab data sources --install``),
read by :mod:`~cliplab.data.corpus.emoji` and :mod:`~cliplab.data.corpus.openclipart`, and rendered by
:mod:`~cliplab.data.corpus.render`; this module puts the items together, splits and writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from ...files import read_jsonl, write_jsonl
from .dedup import deduplicate
from .emoji import (
    SEED,
    emoji_caption,
    is_skin_tone_variant,
    key_to_text,
    load_cldr_annotations,
    load_iconify,
    match_names_to_keys,
)
from .openclipart import select_openclipart
from .render import noto_font_renders, render_task
from .sources import (
    CLDR_ANNOTATIONS,
    DEBIAN_PACKAGES,
    ICONIFY_LICENCES,
    ICONIFY_PACKAGES,
    NOTO_FONT,
    NOTO_FONT_LICENCE,
    NOTO_FONT_SIZE,
    NOTO_FONT_SOURCE,
    OPENCLIPART_DIR,
    OPENCLIPART_LICENCE,
    OPENCLIPART_SOURCE,
    RSVG_CONVERT,
    SOURCES,
    SPLITS,
    ZEROSHOT_SOURCE,
    CorpusSources,
    find_sources,
)

FORMAT_VERSION = 2
RETRIEVAL_TEST_SIZE = 500


@dataclass
class CorpusSummary:
    out: Path
    items: int
    counts: dict[str, dict[str, int]]  # source -> split -> items
    splits: dict[str, int]
    concepts: int  # zero-shot classes
    filters: dict
    build_seconds: float
    image_size: int
    limit: int | None
    cached: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def _config(image_size: int, limit: int | None, include_skin_tones: bool) -> dict:
    return {
        "format": FORMAT_VERSION,
        "image_size": image_size,
        "limit": limit,
        "include_skin_tones": include_skin_tones,
        "seed": SEED,
        "retrieval_test_size": RETRIEVAL_TEST_SIZE,
        "sources": list(SOURCES),
    }


def _summary_from_json(out: Path, data: dict, cached: bool) -> CorpusSummary:
    return CorpusSummary(
        out=out,
        items=data["items"],
        counts=data["counts"],
        splits=data["splits"],
        concepts=data["concepts"],
        filters=data["filters"],
        build_seconds=data["build_seconds"],
        image_size=data["config"]["image_size"],
        limit=data["config"]["limit"],
        cached=cached,
    )


def _cached_summary(out: Path, config: dict) -> CorpusSummary | None:
    summary_path = out / "summary.json"
    pairs_path = out / "pairs.jsonl"
    if not (summary_path.is_file() and pairs_path.is_file()):
        return None
    try:
        data = json.loads(summary_path.read_text())
        if data.get("config") != config:
            return None
        n = 0
        with pairs_path.open() as handle:
            for line in handle:
                item = json.loads(line)
                if not (out / item["image"]).is_file():
                    return None
                n += 1
        if n != data["items"] or not all((out / f"{s}.jsonl").is_file() for s in SPLITS):
            return None
        return _summary_from_json(out, data, cached=True)
    except (OSError, ValueError, KeyError):
        return None


def _emoji_items(
    sources: CorpusSources, limit: int | None, include_skin_tones: bool, filters: dict
) -> tuple[list[dict], dict]:
    annotations = load_cldr_annotations(sources.cldr)
    sets = {name: load_iconify(path, name) for name, path in sources.iconify.items()}
    for iconset in sets.values():
        match_names_to_keys(iconset, annotations)
    meta = {name: {"licence": s.licence, "version": s.version, "info": s.info} for name, s in sets.items()}

    def wanted(key: str, source: str, stats: Counter) -> bool:
        if key not in annotations:
            stats[f"{source}:not_in_cldr"] += 1
            return False
        if not include_skin_tones and is_skin_tone_variant(key):
            stats[f"{source}:skin_tone_variant"] += 1
            return False
        return True

    stats: Counter = Counter()
    per_source: dict[str, list[str]] = {}
    for name, iconset in sets.items():
        used_icons: set[str] = set()
        keys = []
        for key in sorted(iconset.chars):
            if not wanted(key, name, stats):
                continue
            icon = iconset.chars[key]
            if icon in used_icons:
                stats[f"{name}:duplicate_icon"] += 1
                continue
            used_icons.add(icon)
            keys.append(key)
        per_source[name] = keys
    # the font style: every annotated emoji any set has, where the font draws a single glyph
    union = sorted({k for keys in per_source.values() for k in keys})
    font_keys = []
    for key in union:
        if noto_font_renders(key_to_text(key)):
            font_keys.append(key)
        else:
            stats[f"{NOTO_FONT_SOURCE}:no_single_glyph"] += 1
    per_source[NOTO_FONT_SOURCE] = font_keys
    if limit is not None:
        order = union[:]
        random.Random(f"{SEED}:emoji-subset").shuffle(order)
        rank = {k: i for i, k in enumerate(order)}
        per_source = {s: sorted(sorted(keys, key=rank.__getitem__)[:limit]) for s, keys in per_source.items()}
    items = []
    for source, keys in per_source.items():
        for key in keys:
            annotation = annotations[key]
            item_id = f"{source}-{key}"
            if source == NOTO_FONT_SOURCE:
                origin, licence = f"NotoColorEmoji.ttf:U+{key.upper().replace('-', ' U+')}", NOTO_FONT_LICENCE
                task = ("font", key_to_text(key))
            else:
                iconset = sets[source]
                origin, licence = f"{iconset.prefix}:{iconset.chars[key]}", iconset.licence
                task = ("svg_text", iconset.svg(iconset.chars[key]))
            items.append(
                {
                    "id": item_id,
                    "image": f"images/{source}/{item_id}.png",
                    "caption": emoji_caption(annotation.name, annotation.keywords, item_id),
                    "concept": annotation.name.lower(),
                    "source": source,
                    "licence": licence,
                    "split": "zeroshot_test" if source == ZEROSHOT_SOURCE else "train",
                    "origin": origin,
                    "_task": task,
                }
            )
    filters["emoji"] = dict(sorted(stats.items()))
    return items, meta


def _openclipart_items(root: Path, limit: int | None, filters: dict) -> list[dict]:
    kept, counts, patterns = select_openclipart(root)
    filters["openclipart"] = counts
    filters["openclipart_collection_patterns"] = patterns
    # hold out whole titles: only items whose title is unique among the kept ones are eligible, so no
    # caption or near-copy of a retrieval item is in train
    by_title = Counter(item["title"].lower() for item in kept)
    eligible = [item for item in kept if by_title[item["title"].lower()] == 1]
    rng = random.Random(f"{SEED}:retrieval-holdout")
    held = set(item["path"] for item in rng.sample(eligible, min(RETRIEVAL_TEST_SIZE, len(eligible))))
    filters["openclipart"]["retrieval_eligible_unique_title"] = len(eligible)
    items = []
    for rec in kept:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", rec["path"][:-4]).strip("-").lower()
        item_id = f"openclipart-{slug}"
        items.append(
            {
                "id": item_id,
                "image": f"images/{OPENCLIPART_SOURCE}/{item_id}.png",
                "caption": rec["caption"],
                "concept": rec["title"].lower(),
                "source": OPENCLIPART_SOURCE,
                "licence": OPENCLIPART_LICENCE,
                "split": "retrieval_test" if rec["path"] in held else "train",
                "origin": f"/usr/share/openclipart/svg/{rec['path']}",
                "_task": ("svg_file", str(root / rec["path"])),
            }
        )
    ids = Counter(item["id"] for item in items)
    for item in items:  # slugs of distinct paths can collide ("a_b.svg" / "a-b.svg")
        if ids[item["id"]] > 1:
            item["id"] += "-" + hashlib.sha1(item["origin"].encode()).hexdigest()[:6]
            item["image"] = f"images/{OPENCLIPART_SOURCE}/{item['id']}.png"
    if limit is not None:
        # stratified, so an item's split never depends on the limit
        rng = random.Random(f"{SEED}:openclipart-subset")
        held_items = [i for i in items if i["split"] == "retrieval_test"]
        train_items = [i for i in items if i["split"] == "train"]
        n_held = min(len(held_items), max(1, round(limit * len(held_items) / max(1, len(items)))))
        chosen = rng.sample(held_items, n_held) + rng.sample(train_items, min(len(train_items), max(0, limit - n_held)))
        items = sorted(chosen, key=lambda i: i["id"])
    return items


def _licenses_markdown(meta: dict, versions: dict) -> str:
    lines = [
        "# Licences of the sample corpus",
        "",
        "Every item in `pairs.jsonl` names its `source` and `licence` (SPDX id); `origin` names the icon or file",
        "it was rendered from. Images are rasterised (PNG) renderings of the works below; no other changes",
        "except trimming, padding to a square on white and resizing.",
        "",
        "| source | licence | author | where it came from |",
        "|---|---|---|---|",
    ]
    for source in ICONIFY_PACKAGES:
        info = meta.get(source, {}).get("info", {})
        author = info.get("author", {})
        lic = info.get("license", {})
        lines.append(
            f"| {source} | {meta.get(source, {}).get('licence', ICONIFY_LICENCES[source])} ({lic.get('url', '')}) | "
            f"{author.get('name', '')} ({author.get('url', '')}) | npm `{ICONIFY_PACKAGES[source]}@"
            f"{meta.get(source, {}).get('version', '')}` (Iconify JSON; `icons.json`, `chars.json`) |"
        )
    lines += [
        f"| {NOTO_FONT_SOURCE} | {NOTO_FONT_LICENCE} (the font; its artwork is also published under Apache-2.0 "
        "at https://github.com/googlefonts/noto-emoji) | Google Inc. | Debian `fonts-noto-color-emoji` "
        f"{versions.get('fonts-noto-color-emoji', '')}, `{NOTO_FONT}` drawn with Pillow at size {NOTO_FONT_SIZE} |",
        f"| {OPENCLIPART_SOURCE} | {OPENCLIPART_LICENCE} (Creative Commons Public Domain Dedication and "
        "Certification; see `/usr/share/doc/openclipart-svg/copyright`) | the Open Clip Art Library contributors "
        f"(http://www.openclipart.org; author per file in its RDF metadata) | Debian `openclipart-svg` "
        f"{versions.get('openclipart-svg', '')}, `{OPENCLIPART_DIR}` |",
        "",
        "Captions of emoji come from the Unicode CLDR English annotations (names and keywords;",
        f"`{CLDR_ANNOTATIONS}` and `annotationsDerived/en.xml`, Debian `unicode-cldr-core` "
        f"{versions.get('unicode-cldr-core', '')}), Unicode-DFS-2016 (Copyright Unicode, Inc.).",
        "Captions of Openclipart items come from each file's own metadata (public domain).",
        "",
        "Attribution: Twemoji graphics by Twitter, Inc. and other contributors, CC-BY-4.0",
        "(https://creativecommons.org/licenses/by/4.0/). OpenMoji graphics by the OpenMoji project",
        "(https://openmoji.org), CC-BY-SA-4.0 (https://creativecommons.org/licenses/by-sa/4.0/): the renderings of",
        "them in `images/openmoji/` are adaptations and are shared under CC-BY-SA-4.0 too; so are those of",
        "EmojiOne 1 (Ranks.com / JoyPixels, CC-BY-SA-4.0) in `images/emojione-v1/`. Fluent Emoji by Microsoft",
        "Corporation, MIT. Noto Emoji (current and version 1) by Google Inc., Apache-2.0. FxEmoji by Mozilla,",
        "Apache-2.0. Renderings by librsvg",
        f"({versions.get('rsvg-convert', '')}).",
        "",
    ]
    return "\n".join(lines)


def _debian_versions() -> dict[str, str]:
    versions = {}
    for package in DEBIAN_PACKAGES:
        try:
            result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
            if result.returncode == 0:
                versions[package] = result.stdout.strip()
        except OSError:
            pass
    try:
        result = subprocess.run([RSVG_CONVERT, "--version"], capture_output=True, text=True)
        versions["rsvg-convert"] = result.stdout.strip()
    except OSError:
        pass
    return versions


def build_sample_corpus(
    out: Path,
    image_size: int = 96,
    progress: bool = True,
    limit: int | None = None,
    *,
    workers: int = 2,
    include_skin_tones: bool = False,
    sources_dir: Path | None = None,
) -> CorpusSummary:
    """Build (or reuse) the sample corpus in ``out``; see the module docstring for the layout.

    ``limit`` caps the items per source (a seeded subset whose splits agree with the full build's).
    Re-running on a complete ``out`` built with the same settings returns at once (``cached``);
    an interrupted build resumes, re-rendering only missing images.
    """
    out = Path(out)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    config = _config(image_size, limit, include_skin_tones)
    cached = _cached_summary(out, config)
    if cached is not None:
        return cached
    start = time.perf_counter()
    sources = find_sources(sources_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "build_config.json"
    if config_path.is_file():
        try:
            previous = json.loads(config_path.read_text())
        except ValueError:
            previous = None
        if previous != config and (out / "images").is_dir():
            shutil.rmtree(out / "images")  # our own renders at other settings: not reusable
    config_path.write_text(json.dumps(config, indent=1) + "\n")

    filters: dict = {}
    emoji, meta = _emoji_items(sources, limit, include_skin_tones, filters)
    clipart = _openclipart_items(sources.openclipart, limit, filters)
    items = emoji + clipart

    for source in SOURCES:
        (out / "images" / source).mkdir(parents=True, exist_ok=True)
    todo = [
        (i["_task"][0], i["_task"][1], str(out / i["image"]), image_size)
        for i in items
        if not (out / i["image"]).is_file()
    ]
    errors: dict[str, str] = {}
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="rendering", unit="img", disable=not progress)
        if workers > 1 and len(todo) > 8:
            import multiprocessing

            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with context.Pool(min(workers, os.cpu_count() or 1)) as pool:
                for dest, error in pool.imap_unordered(render_task, todo, chunksize=8):
                    if error:
                        errors[dest] = error
                    bar.update()
        else:
            for task in todo:
                dest, error = render_task(task)
                if error:
                    errors[dest] = error
                bar.update()
        bar.close()
    failed: Counter[str] = Counter()
    final = []
    for item in items:
        if str(out / item["image"]) in errors:
            failed[item["source"]] += 1
            continue
        item = {k: v for k, v in item.items() if not k.startswith("_")}
        final.append(item)
    filters["render_failed"] = dict(failed)
    if errors:
        filters["render_errors_sample"] = dict(sorted(errors.items())[:10])
    final.sort(key=lambda i: (SOURCES.index(i["source"]), i["id"]))
    final, filters["near_duplicates_removed"] = deduplicate(final, out)  # earlier sets win

    train_concepts = {i["concept"] for i in final if i["split"] == "train" and i["source"] != OPENCLIPART_SOURCE}
    concepts = sorted({i["concept"] for i in final if i["source"] == ZEROSHOT_SOURCE} & train_concepts)

    write_jsonl(out / "pairs.jsonl", final)
    for split in SPLITS:
        write_jsonl(out / f"{split}.jsonl", [i for i in final if i["split"] == split])
    (out / "concepts.json").write_text(json.dumps(concepts, ensure_ascii=False, indent=0) + "\n")
    versions = _debian_versions()
    (out / "LICENSES.md").write_text(_licenses_markdown(meta, versions))

    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in final:
        counts[item["source"]][item["split"]] += 1
    splits = Counter(item["split"] for item in final)
    seconds = round(time.perf_counter() - start, 1)
    summary = {
        "items": len(final),
        "counts": {s: dict(v) for s, v in counts.items()},
        "splits": {s: splits.get(s, 0) for s in SPLITS},
        "concepts": len(concepts),
        "filters": filters,
        "build_seconds": seconds,
        "rendered": len(todo),
        "config": config,
        "sources": {
            **{ICONIFY_PACKAGES[s]: m["version"] for s, m in meta.items()},
            **versions,
        },
        "licences": {s: next((i["licence"] for i in final if i["source"] == s), None) for s in SOURCES},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return _summary_from_json(out, summary, cached=False)


def read_corpus_split(out: Path, split: str) -> list[dict]:
    """The items of one split (``train``, ``zeroshot_test``, ``retrieval_test``) or ``pairs`` (all),
    as dicts; ``image`` stays relative to ``out``."""
    out = Path(out)
    name = "pairs" if split in ("pairs", "all") else split
    if name != "pairs" and name not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} or 'pairs'")
    path = out / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the corpus first (cliplab data sample-corpus {out})")
    return read_jsonl(path)
