"""WebDataset tar shards: listing, reading and writing them.

Sources
-------
WebDataset tar shards: ``data/{000000..000099}.tar`` brace patterns, globs
(``data/*.tar``), a single ``.tar`` file or a folder of ``.tar`` files.  A sample is the
group of consecutive tar members sharing a key: ``KEY.jpg|jpeg|png|webp|...`` plus
``KEY.txt`` (other members such as ``KEY.json`` are ignored).

Shards are *streaming* sources (:class:`cliplab.data.loader.ShardStream`);
:func:`expand_shards` lists the files of a pattern and :func:`iter_shard` reads one.
:func:`pack_shards` turns pairs into shards (``cliplab data pack``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from glob import glob, has_magic
from pathlib import Path
from typing import Any, NamedTuple

from ..images import IMAGE_EXTENSIONS
from .pairs import Pair, PathLike

__all__ = [
    "ShardSample",
    "expand_shards",
    "iter_shard",
    "pack_shards",
]

logger = logging.getLogger(__name__)


# =========================================================================== shard files


def _expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{000..009}`` (optionally ``{0..9..2}``) ranges."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if rng is not None:
        a, b = rng.group(1), rng.group(2)
        step = int(rng.group(3) or 1) or 1
        lo, hi = int(a), int(b)
        padded = (len(a) > 1 and a.lstrip("-").startswith("0")) or (len(b) > 1 and b.lstrip("-").startswith("0"))
        width = max(len(a), len(b)) if padded else 0
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        options = [str(v).zfill(width) for v in values]
    elif "," in body:
        options = body.split(",")
    else:  # a literal "{...}": keep it
        return [head + "{" + body + "}" + s for s in _expand_braces(tail)]
    return [head + opt + rest for opt in options for rest in _expand_braces(tail)]


def expand_shards(pattern: PathLike) -> list[Path]:
    """List the shard files of a pattern.

    ``pattern`` may be a brace pattern (``a/{000000..000009}.tar``, ``{a,b}/x.tar``,
    expanded in order), a glob (``b/*.tar``, sorted), both, a single ``.tar`` file, or a
    folder (its ``.tar`` files, sorted, not recursive).

    Raises:
        FileNotFoundError: an explicit path does not exist, or a glob matches nothing.
    """
    shards: list[Path] = []
    for item in _expand_braces(os.fspath(pattern)):
        item = os.path.expanduser(item)
        if has_magic(item):
            matches = sorted(glob(item))
            if not matches:
                raise FileNotFoundError(f"no shard matches {item!r}")
            shards.extend(Path(m) for m in matches)
        elif os.path.isdir(item):
            found = sorted(Path(item).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in folder {item!r}")
            shards.extend(found)
        elif os.path.exists(item):
            shards.append(Path(item))
        else:
            raise FileNotFoundError(f"shard not found: {item!r}")
    return shards


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = path up to the first dot of the base name; the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class ShardSample(NamedTuple):
    """A complete sample read from a shard by :func:`iter_shard`."""

    key: str
    image: bytes
    ext: str
    caption: str


_ZERO_BLOCK = bytes(512)
_FILE_TYPES = (0x30, 0x00, 0x37)  # "0", NUL (old regular file), "7" (contiguous file)
_OTHER_TYPES = (0x31, 0x32, 0x33, 0x34, 0x35, 0x36)  # links, devices, directories, FIFOs: no data


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _tarfile_members(
    fh: Any, offset: int, on_error: Callable[[BaseException], None]
) -> Iterator[tuple[str, int, int, bytes | None]]:
    """:func:`_tar_members` through :mod:`tarfile`, from the header at ``offset`` on."""
    try:
        fh.seek(offset)
        tf = tarfile.open(fileobj=fh, mode="r:")  # starts at the current position
        while True:
            ti = tf.next()
            if ti is None:
                return
            del tf.members[:]  # type: ignore[attr-defined]  # tarfile keeps every header; not needed
            if ti.isfile():
                yield ti.name, ti.offset_data, ti.size, None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        on_error(exc)


def _tar_members(fh: Any, on_error: Callable[[BaseException], None]) -> Iterator[tuple[str, int, int, bytes | None]]:
    """Regular files of an uncompressed tar as ``(name, data offset, size, data or None)``.

    Only headers are read, each together with the block after it, so the data of members
    of at most 512 bytes (captions) comes along for free; larger members give ``None``.

    Plain ustar / v7 / GNU headers are parsed directly (about 4x faster than
    :mod:`tarfile`); at the first header that is anything else (pax or GNU long-name
    headers, base-256 sizes, an unexpected checksum) the rest of the archive is read
    with :mod:`tarfile`, which also decides whether it is damaged.  A damaged or
    truncated archive calls ``on_error`` and ends the listing; a member whose data runs
    past the end of the file is not listed.
    """
    try:
        file_size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        on_error(exc)
        return
    offset = 0
    while True:
        try:
            fh.seek(offset)
            chunk = fh.read(1024)
        except OSError as exc:
            on_error(exc)
            return
        block = chunk[:512]
        if not block:
            if offset == 0:
                on_error(tarfile.ReadError("empty file"))
            elif offset > file_size:
                on_error(tarfile.ReadError("unexpected end of data"))
            return  # like tarfile, accept an archive that ends without its zero blocks
        if len(block) < 512:
            on_error(tarfile.ReadError(f"truncated header at byte {offset}"))
            return
        if block == _ZERO_BLOCK:
            return
        typeflag = block[156]
        plain = typeflag in _FILE_TYPES or typeflag in _OTHER_TYPES
        if plain:
            try:
                size = _octal(block[124:136])
                checksum = _octal(block[148:156])
            except ValueError:
                plain = False
        if plain:
            plain = checksum == 256 + sum(block) - sum(block[148:156])
        prefix = b""
        if plain and block[345]:
            prefix = block[345:500].split(b"\0", 1)[0]
            plain = block[257:263] == b"ustar\x00"  # POSIX ustar: a name prefix (else GNU fields)
        if not plain:
            yield from _tarfile_members(fh, offset, on_error)
            return
        data = offset + 512
        if data + size > file_size:
            on_error(tarfile.ReadError(f"member at byte {offset} runs past the end of the file"))
            return
        if typeflag in _FILE_TYPES:
            name = block[:100].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
            if not (typeflag == 0 and name.endswith(b"/")):  # v7 directory
                head = chunk[512 : 512 + size] if size <= 512 else None
                yield name.decode("utf-8", "surrogateescape"), data, size, head
        offset = data + ((size + 511) & ~511)


def _tar_groups(
    fh: Any, on_error: Callable[[BaseException], None]
) -> Iterator[tuple[str, tuple[int, int, str] | None, str | None]]:
    """Group consecutive tar members by key without reading image data.

    Yields ``(key, (image offset, image size, image ext) or None, caption or None)``.
    Only headers and ``.txt`` members are read.  A damaged tar calls ``on_error`` and
    ends the groups (the group in progress is still yielded).
    """
    key: str | None = None
    image: tuple[int, int, str] | None = None
    caption: str | None = None
    for name, offset, size, head in _tar_members(fh, on_error):
        k, ext = _split_member_name(name)
        if k != key:
            if key is not None:
                yield key, image, caption
            key, image, caption = k, None, None
        if ext in IMAGE_EXTENSIONS:
            if image is None:
                image = (offset, size, ext)
        elif ext == "txt":
            if head is None:
                fh.seek(offset)
                head = fh.read(size)
            caption = head.decode("utf-8", "replace").strip()
    if key is not None:
        yield key, image, caption


def iter_shard(path: PathLike) -> Iterator[ShardSample]:
    """Yield the samples of one tar shard in file order (image bytes as stored, caption text).

    Samples without an image or a ``.txt`` member are left out; no filter is applied.

    Raises:
        tarfile.ReadError: the file is not a tar archive or is damaged.
    """

    def fail(exc: BaseException) -> None:
        raise tarfile.ReadError(f"{os.fspath(path)}: {exc}") from exc

    with open(os.fspath(path), "rb", buffering=0) as fh:
        for key, image, caption in _tar_groups(fh, fail):
            if image is None or caption is None:
                continue
            fh.seek(image[0])
            yield ShardSample(key, fh.read(image[1]), image[2], caption)


_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def _image_extension(path: Path, data: bytes) -> str | None:
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_EXTENSIONS:
        return ext
    from PIL import Image  # sniff the header only; nothing is decoded

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _FORMAT_EXTENSIONS.get(im.format or "")
    except Exception:
        return None


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # byte-identical shards for identical input
    tf.addfile(info, io.BytesIO(data))


def pack_shards(
    pairs: Sequence[Pair],
    out_dir: PathLike,
    samples_per_shard: int = 1000,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write pairs as WebDataset shards ``out_dir/shard-000000.tar``, ``shard-000001.tar``, ...

    Each sample is ``KEY.<ext>`` with the original encoded image bytes (never
    re-encoded; ``ext`` is the file's lower-case extension, or sniffed from the header
    for unusual names) and ``KEY.txt`` with the UTF-8 caption.  Keys are the 9-digit
    running sample number.  Each shard is written to a temporary name, fsynced and
    renamed, so a shard either exists complete or not at all.  Image files that cannot
    be read, or whose format is unknown, are skipped and logged.

    Args:
        pairs: the pairs, e.g. from :func:`read_pairs` (and :func:`filter_captions`).
        out_dir: output folder (created if needed).
        samples_per_shard: samples per shard (the last shard may hold fewer).
        progress: show a tqdm progress bar.
        overwrite: replace existing ``shard-*.tar`` files in ``out_dir``; otherwise
            their presence is an error.

    Returns:
        The shard paths in order.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    out = Path(os.fspath(out_dir)).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("shard-*.tar"))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} shard-*.tar files; pass overwrite=True")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="packing", unit="img")
    shards: list[Path] = []
    skipped = {"missing": 0, "unknown_format": 0}
    tf: tarfile.TarFile | None = None
    fh = None
    tmp: Path | None = None
    n_in_shard = 0
    key = 0

    def close_shard() -> None:
        nonlocal tf, fh, tmp
        if tf is None:
            return
        assert fh is not None and tmp is not None  # opened together with tf
        tf.close()
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        final = out / f"shard-{len(shards):06d}.tar"
        os.replace(tmp, final)
        shards.append(final)
        tf, fh, tmp = None, None, None

    try:
        for pair in pairs:
            if bar is not None:
                bar.update(1)
            image = Path(pair.image)
            try:
                data = image.read_bytes()
            except OSError as exc:
                skipped["missing"] += 1
                logger.warning("pack_shards: skipping %s: %s", image, exc)
                continue
            ext = _image_extension(image, data)
            if ext is None:
                skipped["unknown_format"] += 1
                logger.warning("pack_shards: skipping %s: not a recognised image format", image)
                continue
            if tf is None:
                tmp = out / f"shard-{len(shards):06d}.tar.tmp-{os.getpid()}"
                fh = open(tmp, "wb")
                tf = tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT)
                n_in_shard = 0
            name = f"{key:09d}"
            _add_member(tf, f"{name}.{ext}", data)
            _add_member(tf, f"{name}.txt", pair.caption.encode("utf-8", "surrogateescape"))
            key += 1
            n_in_shard += 1
            if n_in_shard >= samples_per_shard:
                close_shard()
        close_shard()
    finally:
        if bar is not None:
            bar.close()
        if tf is not None:  # an exception interrupted a shard: drop the partial file
            try:
                tf.close()
                fh.close()  # type: ignore[union-attr]
            finally:
                Path(tmp).unlink(missing_ok=True)  # type: ignore[arg-type]
    keep = set(shards)
    for stale in existing:
        if stale not in keep:
            stale.unlink(missing_ok=True)
    if any(skipped.values()):
        logger.warning("pack_shards: skipped %s", {k: v for k, v in skipped.items() if v})
    return shards
