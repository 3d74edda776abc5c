"""Rendering the art to square PNGs: SVGs through ``rsvg-convert``, the Noto font's bitmaps through
Pillow; every image composited on white, trimmed, padded to a square and resized."""

from __future__ import annotations

import ctypes
import ctypes.util
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


class _RsvgRectangle(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("width", ctypes.c_double), ("height", ctypes.c_double)]


@functools.cache
def _librsvg():
    """librsvg and cairo through ctypes (the libraries ``rsvg-convert`` itself runs on), or ``None``
    where they cannot be loaded; rendering in-process saves a process start per image."""
    try:
        rsvg_lib = ctypes.CDLL(ctypes.util.find_library("rsvg-2") or "librsvg-2.so.2")
        cairo = ctypes.CDLL(ctypes.util.find_library("cairo") or "libcairo.so.2")
    except OSError:
        return None
    gobject = ctypes.CDLL(ctypes.util.find_library("gobject-2.0") or "libgobject-2.0.so.0")
    rsvg_lib.rsvg_handle_new_from_data.restype = ctypes.c_void_p
    rsvg_lib.rsvg_handle_new_from_data.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    rsvg_lib.rsvg_handle_render_document.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(_RsvgRectangle),
        ctypes.c_void_p,
    ]
    cairo.cairo_image_surface_create.restype = ctypes.c_void_p
    cairo.cairo_create.restype = ctypes.c_void_p
    cairo.cairo_create.argtypes = [ctypes.c_void_p]
    cairo.cairo_image_surface_get_data.restype = ctypes.POINTER(ctypes.c_ubyte)
    for name in (
        "cairo_image_surface_get_data",
        "cairo_image_surface_get_stride",
        "cairo_surface_flush",
        "cairo_surface_destroy",
        "cairo_destroy",
    ):
        getattr(cairo, name).argtypes = [ctypes.c_void_p]
    gobject.g_object_unref.argtypes = [ctypes.c_void_p]
    return rsvg_lib, cairo, gobject


def _rsvg_in_process(data: bytes, size: int):
    """``data`` (an SVG) drawn into a ``size`` x ``size`` RGBA image, aspect ratio kept, or ``None``
    when librsvg refuses it."""
    from PIL import Image

    libs = _librsvg()
    if libs is None:
        return None
    rsvg_lib, cairo, gobject = libs
    handle = rsvg_lib.rsvg_handle_new_from_data(data, len(data), None)
    if not handle:
        return None
    surface = cairo.cairo_image_surface_create(0, size, size)  # CAIRO_FORMAT_ARGB32
    context = cairo.cairo_create(surface)
    try:
        viewport = _RsvgRectangle(0.0, 0.0, float(size), float(size))
        if not rsvg_lib.rsvg_handle_render_document(handle, context, ctypes.byref(viewport), None):
            return None
        cairo.cairo_surface_flush(surface)
        stride = cairo.cairo_image_surface_get_stride(surface)
        pixels = ctypes.string_at(cairo.cairo_image_surface_get_data(surface), stride * size)
        # cairo's ARGB32 is premultiplied, native-endian (BGRA in memory on little-endian machines)
        return Image.frombuffer("RGBa", (size, size), pixels, "raw", "BGRa", stride, 1).convert("RGBA")
    finally:
        cairo.cairo_destroy(context)
        cairo.cairo_surface_destroy(surface)
        gobject.g_object_unref(handle)


def rsvg(svg_path: str | None, svg_text: str | None, size: int, program: str = RSVG_CONVERT):
    """An SVG (a file or its text) rendered to a ``size`` px square, in-process through librsvg where it
    loads, else by ``rsvg-convert``."""
    from PIL import Image

    data = svg_text.encode() if svg_text else open(svg_path or "", "rb").read()
    image = _rsvg_in_process(data, size)
    if image is not None:
        return image
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
        image.save(tmp, format="PNG")
        os.replace(tmp, dest)
        return dest, None
    except Exception as error:
        return dest, f"{type(error).__name__}: {error}"
