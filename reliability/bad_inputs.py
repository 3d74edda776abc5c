"""The bad-input corpus: broken, hostile and unusual images, texts and checkpoints, each with what
cliplab must do with it.

    python -m reliability.bad_inputs OUT_DIR      # writes the files and OUT_DIR/manifest.json

``expect`` is ``ok`` (must be processed normally) or ``error`` (must be refused with a clear,
specific message, or skipped with the reason recorded by batch jobs). For texts it applies to
queries and labels (search, the HTTP API, classification); ``Pipeline.embed_texts`` embeds even an
empty string, as the reference implementation does (start and end tokens only). Nothing here may crash a
process, run code, or lose what a store already holds.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TEXT_LIMIT_CHARS = 1_000_000


@dataclass(frozen=True)
class BadInput:
    name: str
    kind: str  # image | text | checkpoint
    expect: str  # ok | error
    what: str
    path: str | None = None  # images and checkpoints
    text: str | None = None  # texts


def _photo(size=(96, 72), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:] = rng.integers(0, 255, 3)
    pixels[size[1] // 4 :, : size[0] // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares ``width x height`` pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


class _RunsCode:
    """Unpickling this calls ``open(marker, 'w')``: a loader that runs pickled code creates the marker."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def image_inputs(folder: Path) -> list[BadInput]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    jpeg, png = _encoded(photo, "JPEG", quality=90), _encoded(photo, "PNG")
    webp, gif = _encoded(photo, "WEBP"), _encoded(photo.convert("P"), "GIF")
    files: list[tuple[str, bytes, str, str]] = [
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "error", "JPEG cut in half"),
        ("corrupt.jpg", jpeg[:20] + bytes(range(256)) * 8, "error", "JPEG header followed by garbage"),
        ("truncated.png", png[: len(png) // 2], "error", "PNG cut in half"),
        ("corrupt.png", png[:40] + b"\xff" * 64 + png[104:], "error", "PNG with a smashed data chunk"),
        ("truncated.webp", webp[: len(webp) // 2], "error", "WebP cut in half"),
        ("truncated.gif", gif[:30], "error", "GIF cut after the header"),
        ("empty.jpg", b"", "error", "zero-byte file"),
        ("text.png", b"this is not an image, just text with a .png name\n", "error", "text with an image extension"),
        ("html.jpg", b"<html><body>404 not found</body></html>", "error", "an HTML error page saved as .jpg"),
        (
            "bomb.png",
            _png_declaring(200_000, 200_000),
            "error",
            "decompression bomb: a 300-byte PNG declaring 200,000 x 200,000 pixels",
        ),
        (
            "huge.png",
            _png_declaring(12_000, 10_000),
            "error",
            "120 megapixels declared, above Pillow's 89.5 MP safety limit",
        ),
        (
            "panorama.png",
            _encoded(Image.new("RGB", (20_000, 12), (40, 90, 200)), "PNG"),
            "ok",
            "20000 x 12 pixels: an extreme aspect ratio",
        ),
        (
            "large.png",
            _encoded(Image.new("RGB", (6_000, 4_000), (200, 90, 40)), "PNG"),
            "ok",
            "24 megapixels, legitimately large",
        ),
        ("cmyk.jpg", _encoded(photo.convert("CMYK"), "JPEG"), "ok", "CMYK JPEG"),
        (
            "gray16.png",
            _encoded(Image.fromarray((np.arange(96 * 72).reshape(72, 96) * 9).astype(np.uint16)), "PNG"),
            "ok",
            "16-bit greyscale PNG",
        ),
        ("palette_alpha.png", _encoded(_palette_with_transparency(), "PNG"), "ok", "palette PNG with transparency"),
        ("animated.gif", _animated(photo, "GIF"), "ok", "animated GIF (first frame is used)"),
        ("animated.webp", _animated(photo, "WEBP"), "ok", "animated WebP"),
        ("rotated.jpg", _exif_rotated(photo), "ok", "JPEG with EXIF orientation 6 (rotate 90)"),
        ("tiny.png", _encoded(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "ok", "1 x 1 pixel"),
        ("rgba.webp", _encoded(photo.convert("RGBA"), "WEBP"), "ok", "WebP with alpha"),
    ]
    entries = []
    for name, data, expect, what in files:
        (folder / name).write_bytes(data)
        entries.append(BadInput(name, "image", expect, what, path=str(folder / name)))
    return entries


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (64, 48), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (10, 10, 40, 30))
    image.info["transparency"] = 0
    return image


def _animated(photo: Image.Image, fmt: str) -> bytes:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    out = io.BytesIO()
    frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _exif_rotated(photo: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(photo, "JPEG", exif=exif.tobytes())


def text_inputs() -> list[BadInput]:
    texts = [
        ("empty", "", "error", "empty text"),
        ("whitespace", " \t\n  ", "error", "whitespace only"),
        ("megabyte", "a dog running " * (TEXT_LIMIT_CHARS // 14), "ok", "1 MB of text (truncated to the context)"),
        ("control", "a cat\x00\x01\x07\x1b[31m\x7f on a mat\r\n", "ok", "control characters and an ANSI escape"),
        ("rtl", "قطة سوداء على الأريكة \u202eevil\u202c", "ok", "right-to-left text with a bidi override"),
        ("emoji", "🐶🐱🚀👨‍👩‍👧‍👦🏳️‍🌈", "ok", "emoji, including ZWJ sequences"),
        ("zalgo", "z" + "\u0336\u0337\u0338" * 200 + "algo", "ok", "hundreds of combining marks"),
        ("surrogates", "broken \udcff surrogate", "ok", "a lone surrogate (invalid UTF-16)"),
    ]
    return [BadInput(name, "text", expect, what, text=text) for name, text, expect, what in texts]


def checkpoint_inputs(folder: Path, marker: Path) -> list[BadInput]:
    """Broken checkpoints. Writing a wrong-architecture one needs cliplab itself."""
    import torch

    from cliplab.checkpoints import write_checkpoint
    from cliplab.model import CLIP, get_preset

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    good = folder / "good"
    write_checkpoint(CLIP(get_preset("ViT-nano")).eval(), good, "cliplab")
    weights = (good / "model.safetensors").read_bytes()
    entries = []

    def add(name: str, data: bytes | None, what: str, expect: str = "error") -> None:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        entries.append(BadInput(name, "checkpoint", expect, what, path=str(path)))

    add("good", None, "a valid cliplab checkpoint (control)", expect="ok")
    add(
        "corrupt.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64,
        "safetensors with a broken header",
    )
    add("truncated.safetensors", weights[: len(weights) // 2], "safetensors cut in half")
    add("empty.pt", b"", "zero-byte .pt")
    add("random.bin", np.random.default_rng(0).bytes(4096), "4 KB of random bytes named .bin")
    with io.BytesIO() as buffer:
        torch.save({"visual.conv1.weight": torch.zeros(3)}, buffer)
        add("partial.pt", buffer.getvalue(), "a state dict with one wrongly shaped tensor")
    wrong = folder / "wrong-architecture"
    wrong.mkdir(exist_ok=True)
    config = json.loads((good / "cliplab_config.json").read_text())
    config["model"]["vision"]["layers"] = config["model"]["vision"]["layers"] + 3
    (wrong / "cliplab_config.json").write_text(json.dumps(config))
    (wrong / "model.safetensors").write_bytes(weights)
    entries.append(
        BadInput(
            "wrong-architecture",
            "checkpoint",
            "error",
            "config says 3 more vision layers than the weights hold",
            path=str(wrong),
        )
    )
    add(
        "runs-code.pt",
        pickle.dumps({"state_dict": _RunsCode(str(marker))}, protocol=2),
        f"a pickle that would create {marker.name} when unpickled",
    )
    add(
        "runs-code-zip.pt", _torch_zip_with(_RunsCode(str(marker))), "a torch.save zip whose pickle would create a file"
    )
    return entries


def _torch_zip_with(payload) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": payload}, buffer)
    return buffer.getvalue()


def build(out: Path) -> list[BadInput]:
    """Write every bad input under ``out`` and ``out/manifest.json``; return the entries."""
    out = Path(out)
    marker = out / "CODE_WAS_RUN"
    entries = image_inputs(out / "images") + text_inputs() + checkpoint_inputs(out / "checkpoints", marker)
    (out / "manifest.json").write_text(json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=True))
    return entries


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m reliability.bad_inputs OUT_DIR")
    built = build(Path(sys.argv[1]))
    print(f"wrote {len(built)} bad inputs to {sys.argv[1]} (manifest.json lists them)")
