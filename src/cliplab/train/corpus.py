"""A real image–caption corpus built from openly licensed art in the package registries.

`build_sample_corpus(OUT)` (CLI: ``cliplab data sample-corpus OUT``) renders

* emoji in five styles -- Twemoji (CC-BY-4.0), OpenMoji (CC-BY-SA-4.0), Fluent Emoji Flat (MIT) and
  Noto Emoji (Apache-2.0) from the ``@iconify-json/*`` npm tarballs, plus the Debian Noto Color
  Emoji font (OFL-1.1) -- captioned from the Unicode CLDR English annotations (name + keywords);
* Openclipart (Debian ``openclipart-svg``, public domain), captioned from each SVG's RDF metadata
  (title, description, keywords), after named filter rules drop collection titles, stars, gradients,
  patterns and duplicates;

into ``OUT/images/<source>/<id>.png`` with ``pairs.jsonl`` and per-split files. Splits: every
OpenMoji item is ``zeroshot_test`` (an unseen style; ``concepts.json`` lists its concepts that also
appear in a training style), a seeded slice of ~500 Openclipart items with unique titles is
``retrieval_test``, everything else is ``train``.

The sources are installed by ``scripts/install_corpus_sources.sh`` (apt-get + ``npm pack``); the
builder runs it when something is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

FORMAT_VERSION = 1
SEED = 0
RETRIEVAL_TEST_SIZE = 500
CAPTION_MAX_CHARS = 200

# --------------------------------------------------------------------------------------- sources

OPENCLIPART_DIR = Path("/usr/share/openclipart/svg")
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_FONT_SIZE = 109  # the only size at which FreeType loads the CBDT bitmaps
CLDR_ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
CLDR_ANNOTATIONS_DERIVED = Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml")
RSVG_CONVERT = "rsvg-convert"
DEBIAN_PACKAGES = ("openclipart-svg", "fonts-noto-color-emoji", "unicode-cldr-core", "librsvg2-bin")

# source name -> npm package; the source name is also the iconify prefix
ICONIFY_PACKAGES = {
    "twemoji": "@iconify-json/twemoji",
    "openmoji": "@iconify-json/openmoji",
    "fluent-emoji-flat": "@iconify-json/fluent-emoji-flat",
    "noto": "@iconify-json/noto",
}
# fallbacks when a tarball's info.json lacks the SPDX id
ICONIFY_LICENCES = {
    "twemoji": "CC-BY-4.0",
    "openmoji": "CC-BY-SA-4.0",
    "fluent-emoji-flat": "MIT",
    "noto": "Apache-2.0",
}
NOTO_FONT_SOURCE = "noto-font"
NOTO_FONT_LICENCE = "OFL-1.1"
OPENCLIPART_SOURCE = "openclipart"
OPENCLIPART_LICENCE = "CC-PDDC"  # Creative Commons Public Domain Dedication and Certification
ZEROSHOT_SOURCE = "openmoji"
SOURCES = ("twemoji", "openmoji", "fluent-emoji-flat", "noto", NOTO_FONT_SOURCE, OPENCLIPART_SOURCE)
SPLITS = ("train", "zeroshot_test", "retrieval_test")

INSTALL_SCRIPT_NAME = "scripts/install_corpus_sources.sh"


class CorpusSourcesError(FileNotFoundError):
    """The art the corpus is built from is not installed (and could not be)."""


def cliplab_home() -> Path:
    return Path(os.environ.get("CLIPLAB_HOME") or Path.home() / ".cache" / "cliplab")


def default_sources_dir() -> Path:
    """Where the npm tarballs live: ``$CLIPLAB_SOURCES``, else ``$CLIPLAB_HOME/sources``."""
    return Path(os.environ.get("CLIPLAB_SOURCES") or cliplab_home() / "sources")


def install_script() -> Path | None:
    """``scripts/install_corpus_sources.sh`` of the source checkout, if this is one."""
    script = Path(__file__).resolve().parents[3] / INSTALL_SCRIPT_NAME
    return script if script.is_file() else None


def _npm_tarball(sources: Path, package: str) -> Path | None:
    stem = package.lstrip("@").replace("/", "-")
    found = sorted(sources.glob(f"{stem}-[0-9]*.tgz"))
    return found[-1] if found else None


@dataclass
class CorpusSources:
    """Where each input lives on this machine."""

    sources_dir: Path
    iconify: dict[str, Path]  # source name -> npm tarball
    openclipart: Path = OPENCLIPART_DIR
    noto_font: Path = NOTO_FONT
    cldr: tuple[Path, ...] = (CLDR_ANNOTATIONS, CLDR_ANNOTATIONS_DERIVED)
    rsvg_convert: str = RSVG_CONVERT


def missing_sources(sources_dir: Path | None = None) -> list[str]:
    """What is not installed, as human-readable names (empty when everything is there)."""
    sources_dir = Path(sources_dir) if sources_dir else default_sources_dir()
    missing = []
    if not OPENCLIPART_DIR.is_dir():
        missing.append(f"{OPENCLIPART_DIR} (Debian openclipart-svg)")
    if not NOTO_FONT.is_file():
        missing.append(f"{NOTO_FONT} (Debian fonts-noto-color-emoji)")
    if not CLDR_ANNOTATIONS.is_file():
        missing.append(f"{CLDR_ANNOTATIONS} (Debian unicode-cldr-core)")
    if shutil.which(RSVG_CONVERT) is None:
        missing.append(f"{RSVG_CONVERT} (Debian librsvg2-bin)")
    for package in ICONIFY_PACKAGES.values():
        if _npm_tarball(sources_dir, package) is None:
            missing.append(f"{package} (npm tarball in {sources_dir})")
    return missing


def ensure_sources(sources_dir: Path | None = None, install: bool = True) -> CorpusSources:
    """Find the inputs; run ``scripts/install_corpus_sources.sh`` when some are missing (``install``),
    and raise `CorpusSourcesError` naming the script when they still are."""
    sources_dir = Path(sources_dir) if sources_dir else default_sources_dir()
    missing = missing_sources(sources_dir)
    script = install_script()
    if missing and install and script is not None:
        print(f"installing corpus sources with {script} ...", file=sys.stderr)
        result = subprocess.run(["bash", str(script), str(sources_dir)], capture_output=True, text=True)
        missing = missing_sources(sources_dir)
        if missing and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            missing.append("installer failed: " + " / ".join(tail))
    if missing:
        where = str(script) if script else INSTALL_SCRIPT_NAME + " (from the cliplab source tree)"
        raise CorpusSourcesError(
            "corpus sources missing: " + "; ".join(missing) + f". Install them with `bash {where} {sources_dir}` "
            f"(apt-get install {' '.join(DEBIAN_PACKAGES)}, and `npm pack` of "
            f"{', '.join(ICONIFY_PACKAGES.values())} into {sources_dir})."
        )
    iconify = {name: _npm_tarball(sources_dir, package) for name, package in ICONIFY_PACKAGES.items()}
    return CorpusSources(sources_dir=sources_dir, iconify=iconify)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ emoji

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


def load_cldr_annotations(paths: Iterable[Path] = (CLDR_ANNOTATIONS, CLDR_ANNOTATIONS_DERIVED)) -> dict[str, Annotation]:
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
        props: dict = {}
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
        left = props.get("left") if props.get("left") is not None else icon.get("left", 0)
        top = props.get("top") if props.get("top") is not None else icon.get("top", 0)
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
    keyed = {}
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
    kws = [k for k in keywords
           if k.lower() != lowered and k.lower() not in lowered and any(ch.isalnum() for ch in k)]
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


# ------------------------------------------------------------------------------------ openclipart

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
CC = "http://web.resource.org/cc/"
_NS = {"rdf": RDF, "dc": DC, "cc": CC}
_METADATA = re.compile(rb"<metadata\b.*?</metadata>", re.S)
_PUBLIC_DOMAIN = ("publicdomain", "PublicDomain", "/zero/")

# Named filter rules, applied in this order; an item is counted under the first rule it meets.
# Paths (relative to /usr/share/openclipart/svg) of generated or decorative art with no subject.
STAR_GRADIENT_PATTERN_PATHS = ("shapes/stars/", "special/gradients/", "special/patterns/")
STAR_GRADIENT_PATTERN_TITLES = (r"^gramastar$", r"^SVG Gradient Collection\b")
# Titles that name a collection rather than the picture; (pattern, filename is a usable title).
COLLECTION_TITLES: tuple[tuple[str, bool], ...] = (
    (r"^Part of the Flat Icon Collection\b", False),
    (r"^Lemon SVG theme$", False),
    (r"^Etiquette Icons$", False),
    (r"^Various Cliparts$", False),  # Italian file names
    (r"^gold-theme$", False),
    (r"^blueberry - iconset$", False),
    (r"^plastik-icon-theme$", False),
    (r"^Map Symbols$", False),
    (r"^advertising$", False),  # French hazard signs under a wrong title
    (r"^Sallite$", False),
    (r"\b[Ii]con ?[Ss]et\b|\btheme$", False),
    (r"^Clipart by Nicu Buculei\b", True),  # the suffix was copied across files; the file name is right
    (r"^AIGA_Symbol_Signs$", True),
    (r"^SVG Road Signs$", True),
    (r"^Road Signs$", True),
    (r"^Australian Maps$", True),
    (r"^R16 sibmission$", True),
    (r"^Homes Clipart$", True),
)
UNINFORMATIVE_TITLE = re.compile(r"(?i)^(untitled|drawing|image|picture|new document|svg|clip ?art|icon)\s*\d*$")
GENERIC_KEYWORDS = {
    "hash", "unsorted", "clip art", "clipart", "clip_art", "svg", "image", "media", "png", "public domain",
    "publicdomain", "openclipart", "theme", "icons", "icon", "lemon theme icon", "externalsource", "remix",
    "special", "signs and symbols", "drawing", "illustration", "shape", "shapes", "appicon", "mapsym",
}
DESCRIPTION_DROP = re.compile(
    r"(?i)\bcollection\b|^eps converted|^contact\b|^data from\b|^part of\b|^created (with|by)\b|^made (with|by)\b"
)
_URL = re.compile(r"(?i)\b(?:https?://|www\.)\S+|\S+@\S+\.\S+|\bHASH\(0x[0-9a-f]+\)")  # + Perl refs
# "Clipart by Jeff Smith - Christian" -> "Christian" (Nicu Buculei's suffixes are wrong: see above)
_CLIPART_BY = re.compile(r"^Clipart by (?!Nicu Buculei)[^-]+? - (.+)$")
_CARD_SUITS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}
_CARD_RANKS = {"a": "ace", "k": "king", "q": "queen", "j": "jack"}


@dataclass
class ClipartRecord:
    path: str  # relative to the openclipart root
    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    licence_url: str | None = None
    artwork_hash: str = ""
    authors: list[str] = field(default_factory=list)  # dc:creator / dc:publisher / dc:rights agents


def _text(element) -> str:
    return re.sub(r"\s+", " ", (element.text or "") if element is not None else "").strip()


def read_clipart_metadata(svg: Path, rel: str) -> ClipartRecord:
    """Title, description, keywords and licence from an Openclipart SVG's RDF block, and a hash of the
    drawing without its metadata (copies filed in several categories differ only there)."""
    data = svg.read_bytes()
    record = ClipartRecord(path=rel)
    match = _METADATA.search(data)
    if match:
        block = match.group(0)
        element = None
        for candidate in (block, re.sub(rb"^<metadata", b'<metadata xmlns:rdf="%s" xmlns:dc="%s" xmlns:cc="%s"'
                                        % (RDF.encode(), DC.encode(), CC.encode()), block)):
            try:
                element = ET.fromstring(candidate)
                break
            except ET.ParseError:
                continue
        if element is not None:
            work = element.find(".//cc:Work", _NS)
            work = work if work is not None else element
            record.title = _text(work.find("dc:title", _NS))
            record.description = _text(work.find("dc:description", _NS))
            record.keywords = [_text(li) for li in work.findall("dc:subject//rdf:li", _NS) if _text(li)]
            record.authors = [_text(t) for tag in ("dc:creator", "dc:publisher", "dc:rights")
                              for t in work.findall(f"{tag}//dc:title", _NS) if _text(t)]
            licence = work.find("cc:license", _NS)
            if licence is not None:
                record.licence_url = licence.get(f"{{{RDF}}}resource") or None
    drawing = _METADATA.sub(b"", data)
    drawing = re.sub(rb"<sodipodi:namedview\b.*?(?:/>|</sodipodi:namedview>)", b"", drawing, flags=re.S)
    drawing = re.sub(rb'\s(?:sodipodi:docname|sodipodi:docbase|inkscape:export-filename|inkscape:export-[xy]dpi)="[^"]*"',
                     b"", drawing)
    record.artwork_hash = hashlib.sha1(re.sub(rb"\s+", b"", drawing)).hexdigest()
    return record


def _clean(text: str) -> str:
    text = _URL.sub(" ", text.replace("_", " "))
    text = re.sub(r"\s+", " ", text).strip(" .,;:-\t")
    return text


def _informative(text: str) -> bool:
    return bool(re.search(r"[A-Za-z]{3,}", text)) and not UNINFORMATIVE_TITLE.match(text)


def title_from_filename(rel: str) -> str:
    """'transportation/roadsigns/falling_rocks.svg' -> 'falling rocks'; digits, version tags, single
    letters and the AIGA prefix dropped."""
    stem = Path(rel).stem
    stem = re.sub(r"(?i)^aiga_", "", stem)
    words = [w for w in re.split(r"[\s_\-.]+", stem) if w]
    words = [w for w in words if not re.fullmatch(r"v?\d+[a-z]?|[a-z]|md", w, flags=re.I)]
    words = [re.sub(r"(?<=[A-Za-z])\d+$", "", w) for w in words]
    return " ".join(words)


def playing_card_title(rel: str) -> str | None:
    """Openclipart's card decks: 'recreation/games/cards/ornamental/ornamental_s_q.svg' ->
    'queen of spades playing card'."""
    if "/cards/" not in rel:
        return None
    stem = Path(rel).stem
    if re.fullmatch(r"back\d+", stem):
        return "playing card back"
    match = re.fullmatch(r"[a-z]+_([cdhs])_(\d+|[akqj])", stem)
    if match:
        suit, rank = match.groups()
        return f"{_CARD_RANKS.get(rank, rank)} of {_CARD_SUITS[suit]} playing card"
    match = re.fullmatch(r"[a-z]+_jk_([br])", stem)
    if match:
        return ("black" if match.group(1) == "b" else "red") + " joker playing card"
    return None


def clean_title(title: str) -> str:
    """'Tigre04' -> 'Tigre', 'PointingHand2' -> 'Pointing Hand', 'help-books-aj.svg' -> 'help-books-aj'."""
    title = _clean(re.sub(r"(?i)\.svg$", "", title.strip()))
    title = re.sub(r"\s*#\d+$", "", title)
    title = re.sub(r"(?<=[A-Za-z])_?\d+$", "", title)
    if " " not in title:
        title = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", title)
    return title.strip()


def clipart_caption(title: str, description: str, keywords: list[str], max_chars: int = CAPTION_MAX_CHARS,
                    authors: Iterable[str] = ()) -> str:
    """title, then the description and keywords when they add something (not generic, not the
    author's name); URLs and e-mail addresses dropped, capped at ``max_chars`` on a word boundary."""
    names = {_clean(a).lower() for a in authors}
    parts = [title]
    desc = _clean(description)
    if desc and _informative(desc) and not DESCRIPTION_DROP.search(desc) and desc.lower() != title.lower():
        parts.append(desc)
    title_words = set(re.findall(r"[a-z]+", title.lower()))
    kws: list[str] = []
    for keyword in keywords:
        k = _clean(keyword).lower()
        if not k or k in GENERIC_KEYWORDS or k in names or not _informative(k) or k in kws:
            continue
        if set(re.findall(r"[a-z]+", k)) <= title_words:
            continue
        kws.append(k)
    if kws:
        parts.append(", ".join(kws[:6]))
    caption = ". ".join(p.rstrip(" .") for p in parts)
    if len(caption) > max_chars:
        cut = caption[: max_chars + 1].rsplit(" ", 1)[0]
        caption = cut.rstrip(" ,.;:")
    return caption


def select_openclipart(root: Path = OPENCLIPART_DIR) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """Openclipart items that keep useful text, as dicts (path, title, caption, licence_url), with
    counts per filter rule and per matched collection pattern."""
    counts: Counter = Counter()
    pattern_counts: Counter = Counter()
    kept: list[dict] = []
    seen_artwork: set[str] = set()
    star_titles = [re.compile(p) for p in STAR_GRADIENT_PATTERN_TITLES]
    collections = [(re.compile(p), rescue, p) for p, rescue in COLLECTION_TITLES]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(".svg"):
                files.append(Path(dirpath) / name)
    files.sort()
    counts["svg_files"] = len(files)
    for svg in files:
        rel = svg.relative_to(root).as_posix()
        if svg.is_symlink():
            counts["symlink_duplicate"] += 1
            continue
        record = read_clipart_metadata(svg, rel)
        title = record.title
        if record.licence_url and not any(s in record.licence_url for s in _PUBLIC_DOMAIN):
            counts["licence_not_public_domain"] += 1
            continue
        if rel.startswith(STAR_GRADIENT_PATTERN_PATHS) or any(p.search(title) for p in star_titles):
            counts["star_gradient_pattern"] += 1
            continue
        card = playing_card_title(rel)
        by_author = _CLIPART_BY.match(title)
        if card:
            title = card
            counts["repaired_title_playing_card"] += 1
        elif by_author:
            title = by_author.group(1)
            counts["repaired_title_clipart_by"] += 1
        else:
            collection = next(((rescue, p) for regex, rescue, p in collections if regex.search(title)), None)
            if collection is not None or not title:
                rescue = collection[0] if collection else True
                pattern_counts[collection[1] if collection else "(empty title)"] += 1
                fallback = title_from_filename(rel) if rescue else ""
                if not _informative(fallback):
                    counts["collection_title" if collection else "no_title"] += 1
                    continue
                title = fallback
                counts["repaired_title_from_filename"] += 1
        title = clean_title(title)
        if not _informative(title):
            counts["uninformative_title"] += 1
            continue
        if record.artwork_hash in seen_artwork:
            counts["duplicate_artwork"] += 1
            continue
        seen_artwork.add(record.artwork_hash)
        kept.append({
            "path": rel,
            "title": title,
            "caption": clipart_caption(title, record.description, record.keywords, authors=record.authors),
            "licence_url": record.licence_url,
        })
    counts["kept"] = len(kept)
    return kept, dict(counts), dict(pattern_counts)


# -------------------------------------------------------------------------------------- rendering

_FONT = None


def _finish(image, size: int, margin: float = 0.04):
    """Composite on white, trim the white border, pad to a square with a small margin, resize."""
    from PIL import Image, ImageChops

    image = image.convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, image).convert("RGB")
    diff = ImageChops.difference(flat, Image.new("RGB", flat.size, (255, 255, 255))).convert("L")
    bbox = diff.point(lambda v: 255 if v > 8 else 0).getbbox()
    if bbox is None:
        raise ValueError("blank render")
    flat = flat.crop(bbox)
    side = int(round(max(flat.size) * (1 + 2 * margin)))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(flat, ((side - flat.width) // 2, (side - flat.height) // 2))
    return canvas.resize((size, size), Image.LANCZOS)


def _rsvg(svg_path: str | None, svg_text: str | None, size: int, rsvg: str = RSVG_CONVERT):
    from PIL import Image

    cmd = [rsvg, "-w", str(size), "-h", str(size), "-a", "-f", "png"]
    if svg_path:  # without a file it reads stdin
        cmd.append(svg_path)
    result = subprocess.run(cmd, input=svg_text.encode() if svg_text else None, capture_output=True, timeout=120)
    if result.returncode != 0 or not result.stdout:
        raise ValueError(result.stderr.decode(errors="replace").strip()[:200] or "rsvg-convert failed")
    return Image.open(io.BytesIO(result.stdout))


def _noto_font_image(text: str):
    from PIL import Image, ImageDraw, ImageFont

    global _FONT
    if _FONT is None:
        _FONT = ImageFont.truetype(str(NOTO_FONT), NOTO_FONT_SIZE)
    left, top, right, bottom = _FONT.getbbox(text)
    image = Image.new("RGBA", (right + 8, bottom + 8), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((4, 4), text, font=_FONT, embedded_color=True)
    return image


def noto_font_renders(text: str) -> bool:
    """Whether the Noto Color Emoji font draws ``text`` as one glyph (not tofu, not a ZWJ fallback of
    several glyphs side by side)."""
    from PIL import ImageFont

    global _FONT
    if _FONT is None:
        _FONT = ImageFont.truetype(str(NOTO_FONT), NOTO_FONT_SIZE)
    left, top, right, bottom = _FONT.getbbox(text)
    one = _FONT.getlength("\U0001F600")
    return bottom - top > 0 and _FONT.getlength(text) < 1.5 * one


def _render_task(task: tuple) -> tuple[str, str | None]:
    """Worker: (kind, payload, destination, size) -> (destination, error or None)."""
    kind, payload, dest, size = task
    try:
        render_size = max(2 * size, 192)
        if kind == "svg_file":
            image = _rsvg(payload, None, render_size)
        elif kind == "svg_text":
            image = _rsvg(None, payload, render_size)
        elif kind == "font":
            image = _noto_font_image(payload)
        else:
            raise ValueError(f"unknown render kind {kind}")
        image = _finish(image, size)
        tmp = dest + ".tmp"
        image.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, dest)
        return dest, None
    except Exception as error:  # noqa: BLE001 - reported per item as a filter count
        return dest, f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------------------- corpus


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
    return {"format": FORMAT_VERSION, "image_size": image_size, "limit": limit,
            "include_skin_tones": include_skin_tones, "seed": SEED, "retrieval_test_size": RETRIEVAL_TEST_SIZE}


def _summary_from_json(out: Path, data: dict, cached: bool) -> CorpusSummary:
    return CorpusSummary(
        out=out, items=data["items"], counts=data["counts"], splits=data["splits"], concepts=data["concepts"],
        filters=data["filters"], build_seconds=data["build_seconds"], image_size=data["config"]["image_size"],
        limit=data["config"]["limit"], cached=cached,
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


def _emoji_items(sources: CorpusSources, limit: int | None, include_skin_tones: bool, filters: dict) -> tuple[list[dict], dict]:
    annotations = load_cldr_annotations(sources.cldr)
    sets = {name: load_iconify(path, name) for name, path in sources.iconify.items()}
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
            items.append({
                "id": item_id,
                "image": f"images/{source}/{item_id}.png",
                "caption": emoji_caption(annotation.name, annotation.keywords, item_id),
                "concept": annotation.name.lower(),
                "source": source,
                "licence": licence,
                "split": "zeroshot_test" if source == ZEROSHOT_SOURCE else "train",
                "origin": origin,
                "_task": task,
            })
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
        items.append({
            "id": item_id,
            "image": f"images/{OPENCLIPART_SOURCE}/{item_id}.png",
            "caption": rec["caption"],
            "concept": rec["title"].lower(),
            "source": OPENCLIPART_SOURCE,
            "licence": OPENCLIPART_LICENCE,
            "split": "retrieval_test" if rec["path"] in held else "train",
            "origin": f"/usr/share/openclipart/svg/{rec['path']}",
            "_task": ("svg_file", str(root / rec["path"])),
        })
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
        "them in `images/openmoji/` are adaptations and are shared under CC-BY-SA-4.0 too. Fluent Emoji by",
        "Microsoft Corporation, MIT. Noto Emoji by Google Inc., Apache-2.0. Renderings by rsvg-convert",
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


def _write_jsonl(path: Path, items: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_sample_corpus(
    out: Path,
    image_size: int = 96,
    progress: bool = True,
    limit: int | None = None,
    *,
    workers: int = 2,
    include_skin_tones: bool = False,
    sources_dir: Path | None = None,
    install: bool = True,
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
    sources = ensure_sources(sources_dir, install=install)
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
    todo = [(i["_task"][0], i["_task"][1], str(out / i["image"]), image_size) for i in items if not (out / i["image"]).is_file()]
    errors: dict[str, str] = {}
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="rendering", unit="img", disable=not progress)
        if workers > 1 and len(todo) > 8:
            import multiprocessing

            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with context.Pool(min(workers, os.cpu_count() or 1)) as pool:
                for dest, error in pool.imap_unordered(_render_task, todo, chunksize=8):
                    if error:
                        errors[dest] = error
                    bar.update()
        else:
            for task in todo:
                dest, error = _render_task(task)
                if error:
                    errors[dest] = error
                bar.update()
        bar.close()
    failed = Counter()
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

    train_concepts = {i["concept"] for i in final if i["split"] == "train" and i["source"] != OPENCLIPART_SOURCE}
    concepts = sorted({i["concept"] for i in final if i["source"] == ZEROSHOT_SOURCE} & train_concepts)

    _write_jsonl(out / "pairs.jsonl", final)
    for split in SPLITS:
        _write_jsonl(out / f"{split}.jsonl", [i for i in final if i["split"] == split])
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
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m cliplab.train.corpus OUT [--image-size N] [--limit N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cliplab.train.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--skin-tones", action="store_true", help="also include skin-tone variants of emoji")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = build_sample_corpus(args.out, args.image_size, not args.no_progress, args.limit,
                                      include_skin_tones=args.skin_tones)
    except CorpusSourcesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
