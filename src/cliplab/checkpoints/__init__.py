"""Read and write CLIP checkpoints in every published format.

=================  ==========================================================  =========
format             what it is                                                  read/write
=================  ==========================================================  =========
``cliplab``        folder: ``model.safetensors`` + ``cliplab_config.json``     both
``open_clip``      folder: ``open_clip_config.json`` + weights (hub layout)    both
``huggingface``    folder: ``config.json`` + ``model.safetensors``/``.bin``    both
``openai``         file: TorchScript archive (OpenAI's ``.pt``) or a plain     read; write as
                   state dict (``.pt``/``.bin``/``.safetensors``)              state dict
model config       file: ``.toml``/``.json`` naming towers (timm, Hugging      read
                   Face) and their pretrained weights; heads from a fixed seed
=================  ==========================================================  =========

Models with towers from other libraries (:mod:`cliplab.model.towers`) are written in the ``cliplab`` and
``open_clip`` formats; the Hugging Face CLIP and OpenAI layouts cannot express them, and writing one
there is refused with a message naming the formats that can.

Nothing here unpickles code: safetensors, ``torch.load(weights_only=True)``, or a tensors-only
reader for TorchScript archives.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..model.clip import CLIP
from ..model.configs import CLIPConfig
from .base import CheckpointError, LoadedCheckpoint
from .hub import download, hub_name_to_repo
from .huggingface import is_huggingface_folder, read_huggingface, write_huggingface
from .infer import check_shapes
from .model_config import is_model_config_file, read_model_config
from .native import is_cliplab_folder, read_cliplab_folder, write_cliplab_folder
from .open_clip import is_open_clip_folder, read_open_clip_folder, write_open_clip_folder
from .open_clip_towers import refusal, write_open_clip_towers
from .openai import read_state_dict_file, write_openai_state_dict

FORMATS = ("cliplab", "open_clip", "huggingface", "openai")
_STATE_DICT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}

__all__ = [
    "FORMATS",
    "CheckpointError",
    "LoadedCheckpoint",
    "build_model",
    "read_checkpoint",
    "resolve",
    "write_checkpoint",
]


def resolve(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path for a path or a published name (``ViT-B-32/openai``, ``hf-hub:org/repo``)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    try:
        hub_name_to_repo(str(name_or_path))
    except KeyError:
        raise CheckpointError(
            f"{name_or_path!r} is neither an existing file or folder nor a published model name "
            f"(e.g. ViT-B-32/openai, RN50/openai, hf-hub:ORG/REPO, openai/clip-vit-base-patch32)"
        ) from None
    return download(str(name_or_path), cache_dir)


def read_checkpoint(path: str | os.PathLike, quick_gelu: bool | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint at ``path`` (see the module docstring).

    ``quick_gelu`` overrides the activation for files that do not record it (bare state dicts);
    for a folder whose config records it, a contradicting value is an error.
    """
    path = Path(path)
    if path.is_dir():
        if is_cliplab_folder(path):
            ckpt = read_cliplab_folder(path)
        elif is_open_clip_folder(path):
            ckpt = read_open_clip_folder(path)
        elif is_huggingface_folder(path):
            ckpt = read_huggingface(path)
        else:
            names = sorted(p.name for p in path.iterdir())[:8]
            raise CheckpointError(
                f"{path} is not a CLIP checkpoint folder: expected cliplab_config.json, open_clip_config.json or "
                f"a Hugging Face config.json with weights; found {names}"
            )
        if quick_gelu is not None and quick_gelu != ckpt.config.quick_gelu:
            raise CheckpointError(
                f"{path} records {'QuickGELU' if ckpt.config.quick_gelu else 'GELU'} but "
                f"{'QuickGELU' if quick_gelu else 'GELU'} was requested"
            )
        return ckpt
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if is_model_config_file(path):
        return read_model_config(path)
    if path.suffix not in _STATE_DICT_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint extension {path.suffix!r} "
            f"(expected one of {sorted(_STATE_DICT_SUFFIXES)}, a model config (.toml, .json) or a folder)"
        )
    try:
        return read_state_dict_file(path, quick_gelu=quick_gelu)
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"{path}: {error}") from None


def build_model(ckpt: LoadedCheckpoint) -> CLIP:
    """A :class:`CLIP` in eval mode holding the checkpoint's weights (checked strictly) and, for a
    Hugging Face text tower, its tokenizer."""
    try:
        model = CLIP(ckpt.config)
    except ValueError as error:  # an unknown timm or transformers architecture, a head that cannot fit
        raise CheckpointError(str(error)) from None
    check_shapes(ckpt.state_dict, model.state_dict(), f"checkpoint ({ckpt.source_format})")
    model.load_state_dict(ckpt.state_dict, strict=True)
    if model.has_text_tower:
        if ckpt.tokenizer is None:
            raise CheckpointError(f"the {ckpt.source_format} checkpoint's Hugging Face text tower has no tokenizer")
        model.text.tokenizer = ckpt.tokenizer
    return model.eval()


def write_checkpoint(
    model: CLIP,
    dest: str | os.PathLike,
    format: str = "cliplab",
    preprocess: dict | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` to ``dest`` in ``format`` (one of :data:`FORMATS`); returns the path written."""
    dest = Path(dest)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    config: CLIPConfig = model.config
    if config.is_composed and format in ("huggingface", "openai"):
        raise CheckpointError(refusal(config, format))
    if format == "cliplab":
        write_cliplab_folder(state_dict, config, dest, preprocess, metadata, tokenizer=model.tokenizer)
    elif format == "open_clip" and config.is_composed:
        write_open_clip_towers(state_dict, config, dest, preprocess, tokenizer=model.tokenizer)
    elif format == "open_clip":
        write_open_clip_folder(state_dict, config, dest, preprocess)
    elif format == "huggingface":
        write_huggingface(state_dict, config, dest, preprocess)
    elif format == "openai":
        if dest.suffix not in {".pt", ".pth", ".bin"}:
            dest = dest / "model.pt" if dest.is_dir() else dest.with_suffix(".pt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_openai_state_dict(state_dict, dest)
    else:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")
    return dest
