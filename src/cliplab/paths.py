"""Where cliplab keeps its own files: one home folder, ``$CLIPLAB_HOME`` or ``~/.cache/cliplab``.

models/    named models (the default model ``cliplab-lite``, ...), loadable by name
corpus/    the sample corpus the default model is trained on
features/  the cached features of locked towers (``cliplab.train.features``)
sources/   the npm tarballs the sample corpus is rendered from (``$CLIPLAB_SOURCES`` overrides)
runs/      training runs of the built-in models
stores/    the demo's search store
"""

from __future__ import annotations

import os
from pathlib import Path

#: The named model that every command and ``cliplab.load()`` use when no model is given.
DEFAULT_MODEL = "cliplab-lite"


def cliplab_home() -> Path:
    """``$CLIPLAB_HOME`` if set and not empty, else ``~/.cache/cliplab``."""
    value = os.environ.get("CLIPLAB_HOME", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "cliplab"


def models_dir() -> Path:
    """Named models: ``cliplab.load("NAME")`` looks for ``models_dir() / NAME``."""
    return cliplab_home() / "models"


def sources_dir() -> Path:
    """The npm tarballs of the sample corpus: ``$CLIPLAB_SOURCES`` if set, else ``HOME/sources``."""
    value = os.environ.get("CLIPLAB_SOURCES", "").strip()
    return Path(value).expanduser() if value else cliplab_home() / "sources"
