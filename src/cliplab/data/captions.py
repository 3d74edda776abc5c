"""Caption filters: named rules, each with a count of what it removed.

One set of rules serves both paths:

* the training loader and ``cliplab data pack`` apply :data:`CAPTION_RULES` (``empty``, ``numeric``,
  ``filename``) through :func:`caption_rule` / :func:`filter_captions`;
* the web path (``cliplab data extract``, ``cliplab data filter``) applies a :class:`CaptionFilter`,
  by default with every rule of :data:`WEB_CAPTION_RULES`: the three above, plus ``url``,
  ``boilerplate``, ``too_short``, ``too_long``, ``language`` (an offline model that ships inside its
  wheel, py3langid) and ``repeated`` (one alt text on too many different images).

Every rule is a name and a check; :meth:`CaptionFilter.apply` returns which rows it keeps and a count
per rule (every rule present, possibly 0). A caption is counted under the first rule that rejects it,
in the order of the filter's rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pairs import Pair

__all__ = [
    "CAPTION_RULES",
    "WEB_CAPTION_RULES",
    "CaptionFilter",
    "FilterResult",
    "LanguageDetector",
    "caption_rule",
    "filter_captions",
    "normalise_caption",
]

#: The rules the training loader applies to every caption (names of :func:`caption_rule`'s answers).
CAPTION_RULES: tuple[str, ...] = ("empty", "numeric", "filename")
#: Every rule a :class:`CaptionFilter` knows, in the order they are checked.
WEB_CAPTION_RULES: tuple[str, ...] = (
    *CAPTION_RULES,
    "url",
    "boilerplate",
    "too_short",
    "too_long",
    "language",
    "repeated",
)

# --------------------------------------------------------------------------- the base rules

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015"
_NUMERIC_RE = re.compile(rf"(?:isbn(?:-1[03])?[\s:#-]*)?[\d\sxX.,:;/#+()\-{_DASHES}]+", re.IGNORECASE)
_FILE_EXT_RE = re.compile(
    r"[^\n/\\]{0,200}\.(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|heic|heif|avif|raw|cr2|nef|arw|dng|svg|"
    r"mp4|mov|avi|mkv|pdf)",
    re.IGNORECASE,
)
_CAMERA_RE = re.compile(
    r"(?:img|dsc[nf]?|dcim|pict?|pic|mvimg|pxl|vid|mov|gopr|gp|dji|wp|imag|sam|p|screenshot|scan|photo|image)"
    r"[_\-]?\d{2,}[\w\-.]*",
    re.IGNORECASE,
)
_TOKEN_RE = re.compile(r"[\w\-.]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def _is_filename_like(text: str) -> bool:
    if _FILE_EXT_RE.fullmatch(text) or _CAMERA_RE.fullmatch(text):
        return True
    if not _TOKEN_RE.fullmatch(text) or len(text) < 6:
        return False
    digits = sum(c.isdigit() for c in text)
    if "_" in text and digits >= 3:  # 12345678_abcdef, 2021_05_03, img_0001_a
        return True
    compact = text.replace("-", "")
    if len(compact) >= 8 and digits >= 2 and _HEX_RE.fullmatch(compact):  # hashes, UUIDs
        return True
    return digits >= 4 and digits * 2 >= len(text)  # 20210503T1422, B07X12345


def caption_rule(caption: str) -> str | None:
    """Name of the first :data:`CAPTION_RULES` rule that rejects ``caption``, or ``None``.

    * ``"empty"``: empty or whitespace only;
    * ``"numeric"``: only digits, dashes, ``X`` and number punctuation (prices, dates,
      ISBNs such as ``978-3-16-148410-0`` or ``0-306-40615-X``, optionally prefixed
      by ``ISBN``);
    * ``"filename"``: looks like a file name: ends with a media file extension
      (``photo.png``), a camera name (``IMG_1234``, ``DSC0001``, ``PXL_2021...``), or a
      single token that is hash-like or mostly digits (``12345678_abcdef``).
    """
    text = caption.strip()
    if not text:
        return "empty"
    if _NUMERIC_RE.fullmatch(text) and any(c.isdigit() for c in text):
        return "numeric"
    if _is_filename_like(text):
        return "filename"
    return None


def filter_captions(pairs: Iterable[Pair]) -> tuple[list[Pair], dict[str, int]]:
    """Remove pairs with unusable captions (see :func:`caption_rule`).

    Returns:
        The kept pairs (order preserved) and the number removed by each rule of
        :data:`CAPTION_RULES` (every rule is present, possibly with 0).
    """
    counts = dict.fromkeys(CAPTION_RULES, 0)
    kept: list[Pair] = []
    for pair in pairs:
        rule = caption_rule(pair.caption)
        if rule is None:
            kept.append(pair)
        else:
            counts[rule] += 1
    return kept, counts


# --------------------------------------------------------------------------- the web rules

_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S+|\S+\.(?:com|org|net|html?|php|aspx?)(?:/\S*)?", re.IGNORECASE)
_WORD_RE = re.compile(r"\w+", re.UNICODE)

#: Captions that say nothing about the image (compared after :func:`normalise_caption`).
BOILERPLATE: frozenset[str] = frozenset(
    {
        "image",
        "images",
        "img",
        "photo",
        "photos",
        "picture",
        "pic",
        "thumbnail",
        "thumb",
        "icon",
        "logo",
        "banner",
        "avatar",
        "placeholder",
        "spacer",
        "pixel",
        "untitled",
        "untitled image",
        "no image",
        "no photo",
        "no image available",
        "image not found",
        "image not available",
        "image unavailable",
        "loading",
        "loading image",
        "click here",
        "click to enlarge",
        "click to zoom",
        "click for larger image",
        "read more",
        "learn more",
        "more info",
        "see more",
        "view more",
        "view larger",
        "view image",
        "enlarge",
        "zoom",
        "play",
        "play video",
        "advertisement",
        "ad",
        "sponsored",
        "share",
        "share on facebook",
        "share on twitter",
        "follow us",
        "download",
        "download now",
        "buy now",
        "shop now",
        "add to cart",
        "subscribe",
        "home",
        "menu",
        "search",
        "close",
        "next",
        "previous",
        "prev",
        "back",
        "arrow",
        "button",
        "default",
        "null",
        "none",
        "undefined",
        "alt",
        "alt text",
        "image description",
        "featured image",
        "header image",
        "hero image",
        "main image",
        "product image",
        "profile picture",
        "profile photo",
        "user avatar",
        "gravatar",
        "rss",
        "facebook",
        "twitter",
        "instagram",
        "pinterest",
        "linkedin",
        "youtube",
    }
)
# "image 3", "photo 2 of 10", "slide 4", "figure 1": numbered boilerplate.
_NUMBERED_BOILERPLATE_RE = re.compile(
    r"(?:image|img|photo|picture|pic|slide|figure|fig|thumbnail|gallery image|screenshot)\s*#?\s*\d+(?:\s*(?:of|/)\s*\d+)?",
    re.IGNORECASE,
)


def normalise_caption(caption: str) -> str:
    """Lower case, Unicode NFKC, punctuation at the ends and repeated spaces removed: the form in which
    boilerplate is looked up and repeated alt texts are counted."""
    text = unicodedata.normalize("NFKC", caption).casefold()
    text = " ".join(text.split())
    return text.strip(" \t.,:;!?-_|*·•–—\"'()[]{}<>")


class LanguageDetector:
    """Offline language identification with py3langid (its model, 4.6 MB, ships inside its wheel).

    :meth:`detect` gives an ISO 639-1 code and a probability; below ``min_confidence`` the language is
    ``"und"`` (undetermined): short captions ("dog") often are.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        from ..extras import require

        langid = require("py3langid.langid", "data", "caption language detection")
        self._identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        self.min_confidence = float(min_confidence)

    def detect(self, text: str) -> tuple[str, float]:
        if not text.strip():
            return "und", 0.0
        language, score = self._identifier.classify(text)
        return (language if score >= self.min_confidence else "und"), round(float(score), 4)

    def detect_many(self, texts: Iterable[str]) -> list[tuple[str, float]]:
        return [self.detect(t) for t in texts]


@dataclass
class FilterResult:
    """What :meth:`CaptionFilter.apply` decided: ``keep[i]``, the rule that removed row ``i`` (or
    ``None``), and the count per rule (every rule of the filter present)."""

    keep: list[bool]
    reasons: list[str | None]
    counts: dict[str, int]

    @property
    def kept(self) -> int:
        return sum(self.keep)


@dataclass
class CaptionFilter:
    """A configurable set of named caption rules.

    Attributes:
        rules: the rules to apply, a subset of :data:`WEB_CAPTION_RULES`, checked in that order.
        min_words, min_chars: ``too_short`` rejects captions with fewer words or characters
            (DataComp's basic filter keeps more than 2 words and more than 5 characters).
        max_words, max_chars: ``too_long`` rejects captions with more (CLIP reads 77 tokens).
        languages: ``language`` keeps captions detected in one of these ISO 639-1 codes (and
            undetermined ones: too short to tell); empty: every language (the rule is then skipped).
        language_confidence: below this probability the language is undetermined.
        max_repeats: ``repeated`` removes a caption (normalised) that is used for more than this many
            different image URLs ("logo", a site's name, a stock phrase); 0 turns the rule off.
    """

    rules: Sequence[str] = WEB_CAPTION_RULES
    min_words: int = 2
    min_chars: int = 5
    max_words: int = 200
    max_chars: int = 1000
    languages: Sequence[str] = ()
    language_confidence: float = 0.5
    max_repeats: int = 10
    _detector: LanguageDetector | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in WEB_CAPTION_RULES]
        if unknown:
            raise ValueError(f"unknown caption rules {unknown}; known: {', '.join(WEB_CAPTION_RULES)}")
        self.rules = tuple(r for r in WEB_CAPTION_RULES if r in set(self.rules))
        self.languages = tuple(lang.strip().lower() for lang in self.languages if lang.strip())
        if self.min_words < 0 or self.min_chars < 0 or self.max_words < 1 or self.max_chars < 1:
            raise ValueError("caption length limits must be >= 0 (minimums) and >= 1 (maximums)")
        if self.max_repeats < 0:
            raise ValueError(f"max_repeats must be >= 0, got {self.max_repeats}")

    @property
    def detector(self) -> LanguageDetector:
        if self._detector is None:
            self._detector = LanguageDetector(self.language_confidence)
        return self._detector

    @property
    def uses_language(self) -> bool:
        return "language" in self.rules and bool(self.languages)

    def rule(self, caption: str, language: str | None = None) -> str | None:
        """The first per-caption rule that rejects ``caption`` (``repeated`` needs the whole table:
        see :meth:`apply`). ``language``: the caption's detected language if known already."""
        text = caption.strip()
        rules = self.rules
        base = caption_rule(text)
        if base is not None and base in rules:
            return base
        if base == "empty":
            return None  # nothing else applies to an empty caption
        if "url" in rules and _URL_RE.fullmatch(text):
            return "url"
        normal = normalise_caption(text)
        if "boilerplate" in rules and (normal in BOILERPLATE or _NUMBERED_BOILERPLATE_RE.fullmatch(normal)):
            return "boilerplate"
        if "too_short" in rules or "too_long" in rules:
            words = len(_WORD_RE.findall(text))
            if "too_short" in rules and (words < self.min_words or len(text) < self.min_chars):
                return "too_short"
            if "too_long" in rules and (words > self.max_words or len(text) > self.max_chars):
                return "too_long"
        if self.uses_language:
            if language is None:
                language = self.detector.detect(text)[0]
            if language != "und" and language not in self.languages:
                return "language"
        return None

    def apply(
        self,
        captions: Sequence[str],
        urls: Sequence[str] | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> FilterResult:
        """Check every caption; ``repeated`` counts each normalised caption's distinct ``urls`` over
        the captions that passed the other rules (without ``urls``, each row counts as its own image)."""
        counts = dict.fromkeys(self.rules, 0)
        reasons: list[str | None] = [
            self.rule(c, None if languages is None else languages[i]) for i, c in enumerate(captions)
        ]
        if "repeated" in self.rules and self.max_repeats:
            images: dict[str, set[Any]] = defaultdict(set)
            normal = [normalise_caption(c) if r is None else "" for c, r in zip(captions, reasons)]
            for i, (n, r) in enumerate(zip(normal, reasons)):
                if r is None:
                    images[n].add(urls[i] if urls is not None else i)
            for i, n in enumerate(normal):
                if reasons[i] is None and len(images[n]) > self.max_repeats:
                    reasons[i] = "repeated"
        for r in reasons:
            if r is not None:
                counts[r] += 1
        return FilterResult([r is None for r in reasons], reasons, counts)


def describe_rules() -> dict[str, str]:
    """One line per rule, for ``--help`` and the docs."""
    return {
        "empty": "empty or whitespace only",
        "numeric": "only numbers, prices, dates or ISBNs",
        "filename": "a file name (IMG_1234.JPG, photo.png, hashes)",
        "url": "a URL or web address",
        "boilerplate": 'says nothing about the image ("image", "click here", "photo 3 of 10", "logo")',
        "too_short": "fewer than min_words words or min_chars characters",
        "too_long": "more than max_words words or max_chars characters",
        "language": "confidently detected in a language outside --languages",
        "repeated": "the same alt text on more than max_repeats different images",
    }
