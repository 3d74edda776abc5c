"""Search results as a self-contained HTML contact sheet: thumbnails inlined, scores beside them."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from ..images import thumbnail_jpeg
from .search import Hit


def render_contact_sheet(title: str, hits: Sequence[Hit]) -> str:
    cells = []
    for hit in hits:
        if hit.item.kind == "image":
            thumb = thumbnail_jpeg(hit.item.path) if hit.item.path else None
            picture = (
                f'<img src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}" alt="">'
                if thumb
                else '<div class="missing">unreadable</div>'
            )
            label = html.escape(hit.item.path or "")
        else:
            picture = f"<blockquote>{html.escape(hit.item.caption or '')}</blockquote>"
            label = html.escape(hit.item.key)
        cells.append(
            f"<figure>{picture}<figcaption><b>#{hit.rank}</b> {hit.score:.3f}<br>"
            f"<small>{label}</small></figcaption></figure>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} main{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{width:200px;margin:0}} img{{max-width:192px;max-height:192px}} small{{word-break:break-all;color:#555}}
blockquote{{margin:0;padding:.5em;background:#f3f3f3;min-height:4em}}</style></head>
<body><h1>{html.escape(title)}</h1><main>{"".join(cells)}</main></body></html>
"""
