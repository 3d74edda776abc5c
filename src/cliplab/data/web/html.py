"""Images and their captions in one HTML page (the standard library's HTML parser, no dependency).

For every ``<img>`` (and the ``<source>`` elements of its ``<picture>``) :func:`page_images` finds:

* the image URL: the largest ``srcset`` candidate (``data-srcset`` and friends for lazy loading),
  else a lazy-loading attribute (``data-src``, ``data-lazy-src``, ``data-original``, ...), else
  ``src``; resolved against ``<base href>`` and the page URL;
* the caption candidates, best first: ``alt``, the ``<figcaption>`` of its ``<figure>``, ``title``,
  and, when asked, the text around it in its block (up to 30 words, half of them before it);

and leaves out ``data:``, ``javascript:`` and other non-http URLs, tracking pixels (declared 1-2 px,
or a tracker-like URL) and obvious icons (declared under 32 px, ``favicon``, ``.ico``, ``.svg``,
sprites). :func:`page_opt_out` reads the page's robots meta tags (``noai``, ``noimageai``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from .robots import OPT_OUT_DIRECTIVES, USER_AGENT_TOKEN, opted_out

__all__ = ["PageImage", "page_images", "page_opt_out"]

_LAZY_SRC = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src", "data-full-src")
_LAZY_SRCSET = ("data-srcset", "data-lazy-srcset", "data-original-set")
_BLOCKS = frozenset(
    [
        "p",
        "div",
        "li",
        "td",
        "th",
        "dd",
        "dt",
        "section",
        "article",
        "aside",
        "header",
        "footer",
        "main",
        "nav",
        "figure",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "tr",
        "ul",
        "ol",
        "body",
        "form",
    ]
)
_SKIP_TEXT = frozenset({"script", "style", "noscript", "template", "svg"})
_TRACKER_RE = re.compile(
    r"(?:^|[/_.\-?=&])(?:pixel|tracking|tracker|beacon|spacer|blank|transparent|1x1|clear)(?:[/_.\-?=&]|$)|"
    r"/(?:ads?|analytics|collect|impression)/|doubleclick\.net|google-analytics\.com|facebook\.com/tr",
    re.IGNORECASE,
)
_ICON_RE = re.compile(r"(?:favicon|apple-touch-icon|(?:^|[/_\-.])icons?(?:[/_\-.]|$)|sprite)", re.IGNORECASE)
_NEARBY_WORDS = 30


@dataclass
class PageImage:
    """One image of a page: its absolute URL and caption candidates as ``(source, text)``."""

    url: str
    captions: list[tuple[str, str]] = field(default_factory=list)


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def _largest_srcset(value: str) -> str | None:
    """The URL of the biggest ``srcset`` candidate (``w`` descriptors, else ``x``, else the last)."""
    best: tuple[float, int, str] | None = None
    for order, candidate in enumerate(re.split(r",\s+(?=\S)", value.strip())):
        parts = candidate.strip().split()
        if not parts:
            continue
        url, size = parts[0].rstrip(","), 1.0
        if len(parts) > 1:
            descriptor = parts[1].lower()
            try:
                if descriptor.endswith("w"):
                    size = float(descriptor[:-1])
                elif descriptor.endswith("x"):
                    size = float(descriptor[:-1]) * 1000  # a density is compared only with densities
            except ValueError:
                pass
        if best is None or (size, order) > (best[0], best[1]):
            best = (size, order, url)
    return best[2] if best else None


def _declared_size(value: str | None) -> int | None:
    if not value:
        return None
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match and not value.strip().endswith("%") else None


def _usable(url: str) -> bool:
    scheme = urlsplit(url).scheme.lower()
    return scheme in ("http", "https") and bool(urlsplit(url).netloc)


@dataclass
class _Pending:
    image: PageImage
    alt: str
    title: str
    before: str
    after: list[str] = field(default_factory=list)
    after_words: int = 0
    figure: int | None = None  # index into _Parser.figures


class _Parser(HTMLParser):
    def __init__(self, page_url: str, nearby: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.page_url = page_url
        self.base = page_url
        self.nearby = nearby
        self.metas: list[str] = []
        self.images: list[_Pending] = []
        self.skipped = {"not_http": 0, "tracker": 0, "icon": 0}
        self._skip_depth = 0
        self._figures: list[int] = []  # stack of open figure indices
        self.figcaptions: list[str] = []
        self._figcaption_depth = 0
        self._figcaption_text: list[str] = []
        self._recent: list[str] = []  # text since the last block boundary, for "before"
        self._collecting: list[_Pending] = []  # images still collecting "after" text
        self._picture_sources: list[str] = []
        self._in_picture = False
        self._base_seen = False

    # -- text
    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        text = _clean(data)
        if not text:
            return
        if self._figcaption_depth:
            self._figcaption_text.append(text)
        if self.nearby:
            self._recent.append(text)
            for pending in self._collecting:
                if pending.after_words < _NEARBY_WORDS:
                    pending.after.append(text)
                    pending.after_words += len(text.split())

    def _block_boundary(self) -> None:
        self._recent = []
        self._collecting = []

    # -- tags
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag in _SKIP_TEXT:
            self._skip_depth += 1
        if tag == "base" and not self._base_seen and a.get("href"):
            self.base = urljoin(self.page_url, a["href"].strip())
            self._base_seen = True
        elif tag == "meta":
            name = a.get("name", "").strip().lower()
            if name in ("robots", USER_AGENT_TOKEN) and a.get("content"):
                self.metas.append(a["content"] if name == "robots" else f"{USER_AGENT_TOKEN}: {a['content']}")
        elif tag == "figure":
            self.figcaptions.append("")
            self._figures.append(len(self.figcaptions) - 1)
        elif tag == "figcaption":
            self._figcaption_depth += 1
            self._figcaption_text = []
        elif tag == "picture":
            self._in_picture = True
            self._picture_sources = []
        elif tag == "source" and self._in_picture:
            srcset = a.get("srcset") or next((a[k] for k in _LAZY_SRCSET if a.get(k)), "")
            best = _largest_srcset(srcset) if srcset else None
            if best:
                self._picture_sources.append(best)
        elif tag == "img":
            self._image(a)
        if tag in _BLOCKS:
            self._block_boundary()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP_TEXT:
            self._skip_depth = max(0, self._skip_depth - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TEXT:
            self._skip_depth = max(0, self._skip_depth - 1)
        if tag == "figcaption" and self._figcaption_depth:
            self._figcaption_depth -= 1
            if self._figures:
                self.figcaptions[self._figures[-1]] = _clean(" ".join(self._figcaption_text))
        elif tag == "figure" and self._figures:
            self._figures.pop()
        elif tag == "picture":
            self._in_picture = False
            self._picture_sources = []
        if tag in _BLOCKS:
            self._block_boundary()

    def _image(self, a: dict[str, str]) -> None:
        candidates: list[str] = []
        for key in ("srcset", *_LAZY_SRCSET):
            if a.get(key):
                best = _largest_srcset(a[key])
                if best:
                    candidates.append(best)
        candidates += self._picture_sources
        candidates += [a[k] for k in _LAZY_SRC if a.get(k)]
        if a.get("src"):
            candidates.append(a["src"])
        url = None
        for candidate in candidates:
            resolved = urljoin(self.base, candidate.strip()) if self.base else candidate.strip()
            if _usable(resolved):
                url = resolved
                break
        if url is None:
            if candidates:
                self.skipped["not_http"] += 1
            return
        width, height = _declared_size(a.get("width")), _declared_size(a.get("height"))
        if (width is not None and width <= 2) or (height is not None and height <= 2) or _TRACKER_RE.search(url):
            self.skipped["tracker"] += 1
            return
        path = urlsplit(url).path.lower()
        small = (width is not None and width < 32) or (height is not None and height < 32)
        if small or path.endswith((".ico", ".svg")) or _ICON_RE.search(path):
            self.skipped["icon"] += 1
            return
        pending = _Pending(
            PageImage(url),
            alt=_clean(a.get("alt")),
            title=_clean(a.get("title")),
            before=" ".join(" ".join(self._recent).split()[-_NEARBY_WORDS:]),
            figure=self._figures[-1] if self._figures else None,
        )
        self.images.append(pending)
        if self.nearby:
            self._collecting.append(pending)

    def result(self) -> list[PageImage]:
        out = []
        for pending in self.images:
            captions = []
            if pending.alt:
                captions.append(("alt", pending.alt))
            if pending.figure is not None and self.figcaptions[pending.figure]:
                captions.append(("figcaption", self.figcaptions[pending.figure]))
            if pending.title:
                captions.append(("title", pending.title))
            if self.nearby:
                # the text of its block on both sides of it, at most _NEARBY_WORDS words
                before = pending.before.split()[-_NEARBY_WORDS // 2 :]
                after = " ".join(pending.after).split()[: _NEARBY_WORDS - len(before)]
                text = " ".join(before + after)
                if text:
                    captions.append(("nearby", text))
            pending.image.captions = captions
            out.append(pending.image)
        return out


@dataclass
class ParsedPage:
    images: list[PageImage]
    robots_meta: list[str]
    skipped: dict[str, int]


def parse_page(html: str, page_url: str = "", nearby: bool = False) -> ParsedPage:
    parser = _Parser(page_url, nearby)
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # the standard parser gives up on some broken markup
        pass
    return ParsedPage(parser.result(), parser.metas, parser.skipped)


def page_images(html: str, page_url: str = "", nearby: bool = False) -> list[PageImage]:
    """The images of a page with their caption candidates (see the module docstring)."""
    return parse_page(html, page_url, nearby).images


def page_opt_out(metas: list[str], directives: frozenset[str] = OPT_OUT_DIRECTIVES) -> str | None:
    """The opt-out directive among a page's robots meta contents, if any."""
    return opted_out(metas, USER_AGENT_TOKEN, directives)
