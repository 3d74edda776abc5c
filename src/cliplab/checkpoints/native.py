"""cliplab's own format: a folder with ``model.safetensors`` and ``cliplab_config.json`` recording
the architecture, the preprocessing and the tokenizer settings. A model with a Hugging Face text tower
keeps that tower's tokenizer files in ``tokenizer/`` (the Hugging Face layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..model.configs import CLIPConfig
from ..model.towers.configs import HFTextConfig
from ..preprocess import PreprocessConfig
from .base import CheckpointError, LoadedCheckpoint
from .infer import normalise_state_dict
from .torchfiles import load_tensors

CONFIG_FILE = "cliplab_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FOLDER = "tokenizer"
FORMAT_VERSION = 1


def is_cliplab_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_cliplab_folder(folder: Path) -> LoadedCheckpoint:
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        config = CLIPConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a valid cliplab config ({error})") from error
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written by a newer cliplab (format {meta['format_version']}); upgrade cliplab"
        )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    state_dict = normalise_state_dict(load_tensors(weights))
    preprocess = meta.get("preprocess") or PreprocessConfig.from_dict(config.preprocess()).to_dict()
    tokenizer = None
    if isinstance(config.text, HFTextConfig):
        from ..model.towers.hf_tokenizer import HFTokenizer

        try:
            tokenizer = HFTokenizer.from_folder(folder / TOKENIZER_FOLDER, config.text.context_length)
        except FileNotFoundError as error:
            raise CheckpointError(f"{folder}: its Hugging Face text tower's tokenizer is missing ({error})") from None
    return LoadedCheckpoint(
        state_dict, config, "cliplab", preprocess, [], metadata=meta.get("metadata", {}), tokenizer=tokenizer
    )


def write_cliplab_folder(
    state_dict: dict[str, torch.Tensor],
    config: CLIPConfig,
    folder: Path,
    preprocess: dict | None = None,
    metadata: dict | None = None,
    tokenizer: Any = None,
) -> None:
    """Write the folder; ``tokenizer`` is the text tower's own (required for a Hugging Face text tower)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_meta: dict[str, Any] = {
        "vocabulary": "bpe_simple_vocab_16e6",
        "context_length": config.text.context_length,
        "sot_token_id": 49406,
        "eot_token_id": 49407,
        "pad_token_id": 0,
    }
    if isinstance(config.text, HFTextConfig):
        if tokenizer is None:
            raise CheckpointError("a model with a Hugging Face text tower is saved with its tokenizer; none was given")
        tokenizer.save(folder / TOKENIZER_FOLDER)
        tokenizer_meta = {
            "kind": "huggingface",
            "folder": TOKENIZER_FOLDER,
            "context_length": config.text.context_length,
            "pad_token_id": tokenizer.pad_token_id,
        }
    meta = {
        "format": "cliplab",
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "preprocess": dict(preprocess or PreprocessConfig.from_dict(config.preprocess()).to_dict()),
        "tokenizer": tokenizer_meta,
        "metadata": metadata or {},
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=list))
