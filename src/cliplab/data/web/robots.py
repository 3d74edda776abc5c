"""Opt-outs: robots.txt (RFC 9309), the ``X-Robots-Tag`` header and ``<meta name="robots">`` tags.

* :class:`RobotsRules` parses a robots.txt: the group of the most specific matching user agent
  (else ``*``), ``Allow``/``Disallow`` with ``*`` and ``$``, the longest match wins and ``Allow`` wins a
  tie (RFC 9309, section 2.2.2). Python's :mod:`urllib.robotparser` takes the first match instead.
* :func:`opted_out` reads ``X-Robots-Tag`` values and robots meta tags: a directive applies when it
  names no user agent or names ours (``cliplab: noai``); the default opt-out directives are
  img2dataset's: ``noai``, ``noimageai``, ``noindex``, ``noimageindex``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = [
    "OPT_OUT_DIRECTIVES",
    "USER_AGENT_TOKEN",
    "RobotsRules",
    "meta_robots_directives",
    "opted_out",
    "robots_url",
]

#: The product token that robots.txt groups and agent-scoped directives address (case-insensitive).
USER_AGENT_TOKEN = "cliplab"
#: Directives that forbid the use of an image (``X-Robots-Tag`` and robots meta tags).
OPT_OUT_DIRECTIVES: frozenset[str] = frozenset({"noai", "noimageai", "noindex", "noimageindex"})

# A robots.txt larger than this is cut here (RFC 9309 asks crawlers to parse at least 500 KiB).
ROBOTS_MAX_BYTES = 512 * 1024


def robots_url(url: str) -> str:
    """The robots.txt that governs ``url``: same scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"


def _pattern(path: str) -> re.Pattern[str]:
    anchored = path.endswith("$")
    if anchored:
        path = path[:-1]
    regex = ".*".join(re.escape(piece) for piece in path.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def _normalise_path(path: str) -> str:
    # Compare percent-decoded paths, so /a%7Eb and /a~b match each other (RFC 9309, 2.2.2).
    return unquote(path)


@dataclass
class _Group:
    agents: list[str] = field(default_factory=list)
    rules: list[tuple[bool, str, re.Pattern[str]]] = field(default_factory=list)  # (allow, path, pattern)


@dataclass
class RobotsRules:
    """The rules of one robots.txt for one user agent. ``allow_all`` / ``disallow_all`` build the two
    fallbacks: a missing robots.txt (4xx) allows everything, an unreachable one (5xx, network errors)
    disallows everything (RFC 9309, 2.3.1.3-4)."""

    rules: list[tuple[bool, str, re.Pattern[str]]] = field(default_factory=list)
    everything: bool | None = None  # True: allow all, False: disallow all, None: use rules

    @classmethod
    def allow_all(cls) -> RobotsRules:
        return cls(everything=True)

    @classmethod
    def disallow_all(cls) -> RobotsRules:
        return cls(everything=False)

    @classmethod
    def parse(cls, text: str, agent: str = USER_AGENT_TOKEN) -> RobotsRules:
        groups: list[_Group] = []
        current: _Group | None = None
        last_was_agent = False
        for raw in text[:ROBOTS_MAX_BYTES].splitlines():
            line = raw.split("#", 1)[0].strip()
            if ":" not in line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "user-agent":
                if current is None or not last_was_agent:
                    current = _Group()
                    groups.append(current)
                current.agents.append(value.lower())
                last_was_agent = True
                continue
            last_was_agent = False
            if current is None or name not in ("allow", "disallow"):
                continue  # sitemap, crawl-delay, ... or a rule before any user-agent line
            if not value:
                continue  # "Disallow:" (empty) allows everything: no rule
            path = _normalise_path(value)
            current.rules.append((name == "allow", path, _pattern(path)))
        agent = agent.lower()
        chosen: list[tuple[bool, str, re.Pattern[str]]] = []
        # All groups naming our token are merged (RFC 9309, 2.2.1); otherwise the "*" groups.
        mine = [g for g in groups if agent in g.agents]
        for group in mine or [g for g in groups if "*" in g.agents]:
            chosen.extend(group.rules)
        return cls(chosen)

    def allows(self, url: str) -> bool:
        if self.everything is not None:
            return self.everything
        parts = urlsplit(url)
        path = _normalise_path(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if path == "/robots.txt":
            return True
        best_length, allowed = -1, True
        for allow, rule_path, pattern in self.rules:
            if pattern.match(path):
                length = len(rule_path)
                if length > best_length or (length == best_length and allow):
                    best_length, allowed = length, allow
        return allowed


def _directives(value: str, agent: str) -> set[str]:
    """The directives of one X-Robots-Tag / robots meta value that apply to ``agent``.

    ``"noai, noimageai"`` applies to every agent; ``"cliplab: noai"`` only to ours; ``"otherbot: noai"``
    to nobody here. A value may hold several comma-separated parts, each with an optional agent.
    """
    found: set[str] = set()
    scope: str | None = None
    for part in value.split(","):
        part = part.strip().lower()
        if ":" in part:
            maybe_agent, _, rest = part.partition(":")
            maybe_agent = maybe_agent.strip()
            # "unavailable_after: <date>" is a directive with an argument, not an agent
            if maybe_agent not in ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"):
                scope, part = maybe_agent, rest.strip()
        if not part:
            continue
        if scope is None or scope == agent or scope == "*":
            found.add(part.split(":", 1)[0].strip())
    return found


def opted_out(
    values: Iterable[str], agent: str = USER_AGENT_TOKEN, directives: frozenset[str] = OPT_OUT_DIRECTIVES
) -> str | None:
    """The first opt-out directive among ``values`` (``X-Robots-Tag`` header values or robots meta
    contents) that applies to ``agent``, or ``None``."""
    agent = agent.lower()
    for value in values:
        hit = _directives(value, agent) & directives
        if hit:
            return sorted(hit)[0]
    return None


_META_RE = re.compile(r"<meta\b[^>]*>", re.IGNORECASE)
_ATTR_RE = re.compile(r"""([a-zA-Z_:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")


def meta_robots_directives(html: str, agent: str = USER_AGENT_TOKEN) -> list[str]:
    """The contents of the robots meta tags of ``html`` that address every robot (``robots``) or
    ``agent`` by name (``<meta name="cliplab" content="noai">``), as ``opted_out`` reads them."""
    found = []
    for tag in _META_RE.findall(html):
        attrs = {m.group(1).lower(): m.group(2) or m.group(3) or m.group(4) or "" for m in _ATTR_RE.finditer(tag)}
        name = attrs.get("name", "").strip().lower()
        if name in ("robots", agent.lower()) and "content" in attrs:
            found.append(attrs["content"])
    return found
