"""Emoji: the Iconify icon sets (npm ``@iconify-json/*`` tarballs), their Unicode CLDR names and
keywords, and the captions written from them."""

from __future__ import annotations

import json
import random
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sources import CLDR_ANNOTATIONS, CLDR_ANNOTATIONS_DERIVED, ICONIFY_LICENCES, CorpusSourcesError

SEED = 0

SKIN_TONES = range(0x1F3FB, 0x1F400)


def emoji_key(codepoints: Iterable[int]) -> str:
    """Canonical key of an emoji: lowercase hex codepoints without U+FE0F, joined by '-'."""
    return "-".join(f"{cp:04x}" for cp in codepoints if cp != 0xFE0F)


def key_to_text(key: str) -> str:
    return "".join(chr(int(part, 16)) for part in key.split("-"))


def is_skin_tone_variant(key: str) -> bool:
    cps = [int(part, 16) for part in key.split("-")]
    return len(cps) > 1 and any(cp in SKIN_TONES for cp in cps)


@dataclass
class Annotation:
    name: str  # CLDR tts name, e.g. "grinning face", "flag: Japan"
    keywords: list[str]


def load_cldr_annotations(
    paths: Iterable[Path] = (CLDR_ANNOTATIONS, CLDR_ANNOTATIONS_DERIVED),
) -> dict[str, Annotation]:
    """CLDR English emoji names (``type="tts"``) and keywords (``|``-separated), keyed by `emoji_key`.
    Later files do not override earlier ones (en.xml wins over annotationsDerived)."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        for element in ET.parse(path).getroot().iter("annotation"):
            key = emoji_key(ord(c) for c in element.get("cp", ""))
            text = (element.text or "").strip()
            if not key or not text:
                continue
            if element.get("type") == "tts":
                names.setdefault(key, text)
            elif key not in keywords:
                keywords[key] = [k.strip() for k in text.split("|") if k.strip()]
    return {key: Annotation(name, keywords.get(key, [])) for key, name in names.items()}


@dataclass
class IconSet:
    source: str
    prefix: str
    licence: str
    info: dict
    version: str
    icons: dict  # name -> icon data
    aliases: dict
    chars: dict[str, str]  # emoji_key -> icon name
    width: int
    height: int

    def svg(self, name: str) -> str:
        """A standalone SVG document for one icon (aliases and flips resolved, iconify-style)."""
        props: dict[str, Any] = {}
        h_flip = v_flip = False
        rotate = 0
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            alias = self.aliases[name]
            h_flip ^= bool(alias.get("hFlip"))
            v_flip ^= bool(alias.get("vFlip"))
            rotate += int(alias.get("rotate", 0))
            for k in ("left", "top", "width", "height"):
                props.setdefault(k, alias.get(k))
            name = alias["parent"]
        icon = self.icons[name]
        h_flip ^= bool(icon.get("hFlip"))
        v_flip ^= bool(icon.get("vFlip"))
        rotate = (rotate + int(icon.get("rotate", 0))) % 4
        left: float = props["left"] if props.get("left") is not None else icon.get("left", 0)
        top: float = props["top"] if props.get("top") is not None else icon.get("top", 0)
        width = props.get("width") or icon.get("width") or self.width
        height = props.get("height") or icon.get("height") or self.height
        body = icon["body"]
        transforms = []
        if h_flip:
            transforms.append(f"translate({2 * left + width} 0) scale(-1 1)")
        if v_flip:
            transforms.append(f"translate(0 {2 * top + height}) scale(1 -1)")
        if rotate:
            transforms.insert(0, f"rotate({90 * rotate} {left + width / 2} {top + height / 2})")
        if transforms:
            body = f'<g transform="{" ".join(transforms)}">{body}</g>'
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}">{body}</svg>'
        )


def load_iconify(tarball: Path, source: str) -> IconSet:
    """Read an ``@iconify-json/*`` npm tarball: icons.json, chars.json (codepoints -> names), info.json."""
    with tarfile.open(tarball) as tar:

        def member(name: str, default=None):
            try:
                handle = tar.extractfile(f"package/{name}")
            except KeyError:
                return default
            return json.load(handle) if handle else default

        data = member("icons.json")
        info = member("info.json", {}) or data.get("info", {})
        chars = member("chars.json", {}) or {}
        package = member("package.json", {}) or {}
    if data is None:
        raise CorpusSourcesError(f"{tarball} has no package/icons.json: not an @iconify-json tarball")
    licence = (info.get("license") or {}).get("spdx") or ICONIFY_LICENCES.get(source, "NOASSERTION")
    keyed: dict[str, str] = {}
    for codes, name in chars.items():
        key = emoji_key(int(part, 16) for part in codes.split("-"))
        if name in data["icons"] or name in data.get("aliases", {}):
            keyed.setdefault(key, name)
    return IconSet(
        source=source,
        prefix=data.get("prefix", source),
        licence=licence,
        info=info,
        version=package.get("version", ""),
        icons=data["icons"],
        aliases=data.get("aliases", {}),
        chars=keyed,
        width=int(data.get("width", 16)),
        height=int(data.get("height", 16)),
    )


_PLURAL_FIRST_WORDS = {"people", "men", "women", "eyes", "ears", "feet", "children", "twins", "glasses", "scissors"}


def _with_article(name: str) -> str | None:
    """'a grinning face' / 'an apple'; None where an article would read wrong (proper nouns,
    flags, plurals, symbols)."""
    if not name or not ("a" <= name[0] <= "z") or ":" in name:
        return None
    words = name.split()
    first = words[0]
    if first in _PLURAL_FIRST_WORDS or any(
        w.endswith("s") and not w.endswith(("ss", "us", "is")) for w in (first, words[-1])
    ):
        return None
    vowel = first[0] in "aeiou" and not first.startswith(("uni", "use", "eu", "one", "ur"))
    return ("an " if vowel or first.startswith("hour") else "a ") + name


def emoji_caption(name: str, keywords: list[str], item_id: str, seed: int = SEED) -> str:
    """A caption mixing the CLDR name (always present, verbatim) and some of its keywords, from a
    template chosen deterministically per item."""
    rng = random.Random(f"{seed}:caption:{item_id}")
    lowered = name.lower()
    kws = [k for k in keywords if k.lower() != lowered and k.lower() not in lowered and any(ch.isalnum() for ch in k)]
    rng.shuffle(kws)
    kws = kws[: rng.randint(1, 4)] if kws else []
    a_name = _with_article(name)
    if ":" in name:  # "flag: Japan", "keycap: 7", "kiss: woman, man"
        templates = ["{name}", "an emoji of {name}"] + (["{name} ({kws})", "an emoji of {name} ({kws})"] if kws else [])
    else:
        templates = ["{name}", "an emoji of {a_name}", "{a_name} emoji", "{name} icon"]
        if kws:
            templates += ["{name}: {kws}", "{name}: {kws}", "an emoji of {a_name}: {kws}", "{name} ({kws})"]
    template = rng.choice(templates)
    return template.format(name=name, a_name=a_name or name, kws=", ".join(kws))


def match_names_to_keys(iconset: IconSet, annotations: dict) -> int:
    """Fill ``iconset.chars`` of a set that ships no ``chars.json`` (FxEmoji, EmojiOne 1, Noto 1) from its
    icon names, which are its emoji's CLDR names as slugs (``admission-tickets``; FxEmoji drops the
    hyphens: ``admissiontickets``). Returns how many icons matched; unmatched icons are left out."""
    if iconset.chars:
        return 0
    slugs: dict[str, str] = {}
    for key in sorted(annotations):
        slug = re.sub(r"[^a-z0-9]+", "-", annotations[key].name.lower()).strip("-")
        slugs.setdefault(slug, key)
        slugs.setdefault(slug.replace("-", ""), key)
    for name in sorted(iconset.icons):
        key = slugs.get(name)
        if key is not None:
            iconset.chars.setdefault(key, name)
    return len(iconset.chars)
