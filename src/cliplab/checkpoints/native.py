"""cliplab's own format: a folder with ``model.safetensors`` and ``cliplab_config.json`` recording
the architecture, the preprocessing and the tokenizer settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.configs import CLIPConfig
from .base import CheckpointError, LoadedCheckpoint
from .infer import normalise_state_dict
from .openai import default_preprocess
from .torchfiles import load_tensors

CONFIG_FILE = "cliplab_config.json"
WEIGHTS_FILE = "model.safetensors"
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
    preprocess = meta.get("preprocess") or default_preprocess(config.vision.image_size)
    return LoadedCheckpoint(state_dict, config, "cliplab", preprocess, [], metadata=meta.get("metadata", {}))


def write_cliplab_folder(
    state_dict: dict[str, torch.Tensor],
    config: CLIPConfig,
    folder: Path,
    preprocess: dict | None = None,
    metadata: dict | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "cliplab",
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "preprocess": dict(preprocess or default_preprocess(config.vision.image_size)),
        "tokenizer": {
            "vocabulary": "bpe_simple_vocab_16e6",
            "context_length": config.text.context_length,
            "sot_token_id": 49406,
            "eot_token_id": 49407,
            "pad_token_id": 0,
        },
        "metadata": metadata or {},
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=list))
