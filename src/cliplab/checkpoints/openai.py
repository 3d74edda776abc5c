"""OpenAI's published ``.pt`` files (TorchScript archives with fp16 weights) and plain PyTorch or
safetensors state dicts with OpenAI's key names, which OpenCLIP uses too."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..preprocess import PreprocessConfig
from .base import LoadedCheckpoint
from .infer import infer_config, normalise_state_dict
from .torchfiles import is_torchscript_archive, load_tensors


def default_preprocess(image_size: int) -> dict:
    """OpenAI's preprocessing at ``image_size``, as a :class:`~cliplab.preprocess.PreprocessConfig` dict."""
    return PreprocessConfig(image_size=image_size).to_dict()


def read_state_dict_file(path: Path, quick_gelu: bool | None = None) -> LoadedCheckpoint:
    """Read a single-file checkpoint: a TorchScript archive, a ``torch.save`` file or ``.safetensors``."""
    notes = []
    source = "openai-torchscript" if is_torchscript_archive(path) else "state-dict"
    state_dict = normalise_state_dict(load_tensors(path))

    if quick_gelu is None:
        if source == "openai-torchscript":
            quick_gelu = True
            notes.append("QuickGELU: OpenAI TorchScript archives were all trained with it")
        else:
            quick_gelu = True
            message = (
                f"{path.name} does not record its activation; assuming QuickGELU (OpenAI's). Models trained "
                "by OpenCLIP without a '-quickgelu' name use GELU: pass quick_gelu=False (--gelu) for those."
            )
            notes.append(message)
            warnings.warn(message, stacklevel=3)
    config = infer_config(state_dict, quick_gelu=quick_gelu)
    notes.append("attention heads: 64 channels each (OpenAI convention; not recorded in a bare state dict)")
    return LoadedCheckpoint(state_dict, config, source, default_preprocess(config.vision.image_size), notes)


def write_openai_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A plain ``torch.save`` state dict with OpenAI's key names, which ``clip.load`` and
    ``open_clip.create_model(..., pretrained=path)`` accept."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, path)
