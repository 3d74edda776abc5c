"""Optional dependencies, grouped into the extras of ``pip install 'cliplab[EXTRA]'``.

A feature whose extra is not installed fails with one line naming the ``pip install`` to run
(:class:`MissingExtraError`), never with a bare ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: extra -> what it enables (the pyproject.toml extras carry the same names)
EXTRAS = {
    "search": "cliplab index / search: the store's FAISS indexes",
    "serve": "cliplab serve: the HTTP service and web page",
    "train": "cliplab train: config files in YAML",
    "data": "cliplab data extract / download / filter: collecting pairs from the web",
    "onnx": "cliplab convert --to onnx and the ONNX text encoder behind fast one-shot searches",
    "ray": "cliplab index --ray: indexing on a Ray cluster",
    "towers": "image towers from timm and text towers from Hugging Face transformers",
}


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` for ``feature``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or module.split(".")[0] != error.name.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{feature} needs the Python package {error.name!r}, which is not installed: pip install 'cliplab[{extra}]'"
        ) from None
