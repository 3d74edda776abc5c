"""Openclipart (Debian ``openclipart-svg``, public domain): each SVG's RDF metadata, the named filter
rules that drop art without a usable subject, and the captions written from title, description and
keywords."""

from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .sources import OPENCLIPART_DIR

CAPTION_MAX_CHARS = 200

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
    "hash",
    "unsorted",
    "clip art",
    "clipart",
    "clip_art",
    "svg",
    "image",
    "media",
    "png",
    "public domain",
    "publicdomain",
    "openclipart",
    "theme",
    "icons",
    "icon",
    "lemon theme icon",
    "externalsource",
    "remix",
    "special",
    "signs and symbols",
    "drawing",
    "illustration",
    "shape",
    "shapes",
    "appicon",
    "mapsym",
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
        for candidate in (
            block,
            re.sub(
                rb"^<metadata",
                b'<metadata xmlns:rdf="%s" xmlns:dc="%s" xmlns:cc="%s"' % (RDF.encode(), DC.encode(), CC.encode()),
                block,
            ),
        ):
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
            record.authors = [
                _text(t)
                for tag in ("dc:creator", "dc:publisher", "dc:rights")
                for t in work.findall(f"{tag}//dc:title", _NS)
                if _text(t)
            ]
            licence = work.find("cc:license", _NS)
            if licence is not None:
                record.licence_url = licence.get(f"{{{RDF}}}resource") or None
    drawing = _METADATA.sub(b"", data)
    drawing = re.sub(rb"<sodipodi:namedview\b.*?(?:/>|</sodipodi:namedview>)", b"", drawing, flags=re.S)
    drawing = re.sub(
        rb'\s(?:sodipodi:docname|sodipodi:docbase|inkscape:export-filename|inkscape:export-[xy]dpi)="[^"]*"',
        b"",
        drawing,
    )
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


def clipart_caption(
    title: str, description: str, keywords: list[str], max_chars: int = CAPTION_MAX_CHARS, authors: Iterable[str] = ()
) -> str:
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
        kept.append(
            {
                "path": rel,
                "title": title,
                "caption": clipart_caption(title, record.description, record.keywords, authors=record.authors),
                "licence_url": record.licence_url,
            }
        )
    counts["kept"] = len(kept)
    return kept, dict(counts), dict(pattern_counts)
