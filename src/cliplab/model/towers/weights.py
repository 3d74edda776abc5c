"""Fitting a pretrained weights file to a tower: names mapped, extras dropped, every shape checked.

A file that does not fit the tower is an error naming the first tensor that differs (through
:func:`cliplab.checkpoints.infer.check_shapes`), never a silent partial load.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors, ``torch.save``, TorchScript) or a Hugging Face
    folder's weights (single or sharded), read without running code from them."""
    from ...checkpoints.huggingface import _load_weights
    from ...checkpoints.torchfiles import load_tensors

    if path.is_dir():
        return _load_weights(path)[0]
    return load_tensors(path)


def _strip(tensors: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
    return tensors


def _persistent_children(module: nn.Module) -> set[str]:
    return {name.split(".")[0] for name in module.state_dict()}


def fit_by_name(
    tensors: dict[str, torch.Tensor], module: nn.Module, source: str, base_prefix: str = "", drop: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """``tensors`` under ``module``'s names: wrapper prefixes (``module.``, ``_orig_mod.``) stripped; with
    ``base_prefix`` (a Hugging Face base model's, e.g. ``bert.``), only the keys under it, stripped; the
    module's non-persistent buffers, keys under ``drop`` (e.g. a classifier the tower removes) and keys of
    parts the module does not have (a pooler, a masked-LM head) dropped. Then every name and shape must
    match exactly."""
    from ...checkpoints.infer import check_shapes

    tensors = _strip(dict(tensors), _WRAPPER_PREFIXES)
    if base_prefix and any(key.startswith(base_prefix) for key in tensors):
        tensors = {key[len(base_prefix) :]: value for key, value in tensors.items() if key.startswith(base_prefix)}
    expected = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()} - set(expected)
    children = _persistent_children(module)
    drop = tuple(f"{name}." for name in drop)
    kept = {
        key: value
        for key, value in tensors.items()
        if key not in buffers
        and not (key not in expected and key.startswith(drop))
        and (key in expected or key.split(".")[0] in children)
    }
    check_shapes(kept, expected, source)
    return kept


def fit_by_order(tensors: dict[str, torch.Tensor], module: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The file's tensors, in its order, as ``module``'s tensors in theirs (files that name the same
    network differently). Every mapped shape must match; tensors past the module's last one (a
    classifier the tower removes) are dropped."""
    from ...checkpoints.base import CheckpointError

    expected = module.state_dict()
    if len(tensors) < len(expected):
        raise CheckpointError(
            f"{source} has {len(tensors)} tensors but the tower needs {len(expected)}: it does not fit the tower"
        )
    out = {}
    for (ours, want), (theirs, have) in zip(expected.items(), tensors.items()):
        if tuple(have.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: tensor {theirs!r} (mapped in order onto {ours!r}) has shape {list(have.shape)}, "
                f"the architecture needs {list(want.shape)}"
            )
        out[ours] = have
    return out
