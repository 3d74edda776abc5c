"""Rendering the art to square PNGs: SVGs through ``rsvg-convert``, the Noto font's bitmaps through
Pillow; every image composited on white, trimmed, padded to a square and resized."""

from __future__ import annotations

import functools
import io
import os
import subprocess

from .sources import NOTO_FONT, NOTO_FONT_SIZE, RSVG_CONVERT


def finish(image, size: int, margin: float = 0.04):
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
    side = round(max(flat.size) * (1 + 2 * margin))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(flat, ((side - flat.width) // 2, (side - flat.height) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def rsvg(svg_path: str | None, svg_text: str | None, size: int, program: str = RSVG_CONVERT):
    from PIL import Image

    cmd = [program, "-w", str(size), "-h", str(size), "-a", "-f", "png"]
    if svg_path:  # without a file it reads stdin
        cmd.append(svg_path)
    result = subprocess.run(cmd, input=svg_text.encode() if svg_text else None, capture_output=True, timeout=120)
    if result.returncode != 0 or not result.stdout:
        raise ValueError(result.stderr.decode(errors="replace").strip()[:200] or "rsvg-convert failed")
    return Image.open(io.BytesIO(result.stdout))


@functools.cache
def _noto_font():
    """The Noto Color Emoji font at the one size whose colour bitmaps FreeType loads (once per process)."""
    from PIL import ImageFont

    return ImageFont.truetype(str(NOTO_FONT), NOTO_FONT_SIZE)


def _noto_font_image(text: str):
    from PIL import Image, ImageDraw

    font = _noto_font()
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("RGBA", (right + 8, bottom + 8), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((4, 4), text, font=font, embedded_color=True)
    return image


def noto_font_renders(text: str) -> bool:
    """Whether the Noto Color Emoji font draws ``text`` as one glyph (not tofu, not a ZWJ fallback of
    several glyphs side by side)."""
    font = _noto_font()
    _, top, _, bottom = font.getbbox(text)
    one = font.getlength("\U0001f600")
    return bottom - top > 0 and font.getlength(text) < 1.5 * one


def render_task(task: tuple) -> tuple[str, str | None]:
    """Worker: (kind, payload, destination, size) -> (destination, error or None)."""
    kind, payload, dest, size = task
    try:
        render_size = max(2 * size, 192)
        if kind == "svg_file":
            image = rsvg(payload, None, render_size)
        elif kind == "svg_text":
            image = rsvg(None, payload, render_size)
        elif kind == "font":
            image = _noto_font_image(payload)
        else:
            raise ValueError(f"unknown render kind {kind}")
        image = finish(image, size)
        tmp = dest + ".tmp"
        image.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, dest)
        return dest, None
    except Exception as error:
        return dest, f"{type(error).__name__}: {error}"
