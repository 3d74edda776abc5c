"""Building a model whose towers come from other libraries, from its config: the towers' own settings
filled in (architecture, preprocessing, context length), their pretrained weights loaded, their
tokenizer attached, the heads initialised from a fixed seed (so that the same config always builds
the same model, and so the same fingerprint)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..configs import CLIPConfig
from .configs import HFTextConfig, TimmVisionConfig

HEAD_SEED = 0


@dataclass
class BuiltModel:
    model: Any  # cliplab.model.CLIP
    preprocess: dict[str, Any]
    tokenizer: Any  # an HFTokenizer, or None for cliplab's text transformer (OpenAI's BPE)
    notes: list[str] = field(default_factory=list)


def _normalised_source(source: str, base_dir: str | os.PathLike | None) -> str:
    """How a saved config records a source: hub names as ``hf-hub:ORG/NAME``, local paths absolute."""
    from pathlib import Path

    from .sources import HUB_PREFIX, PACKAGE_PREFIX, is_hub_name

    if source.startswith((HUB_PREFIX, PACKAGE_PREFIX)) or source == "timm" or not source:
        return source
    if is_hub_name(source, base_dir):
        return HUB_PREFIX + source
    path = Path(source).expanduser()
    return str((path if path.is_absolute() or base_dir is None else Path(base_dir) / path).resolve())


def resolve_config(config: CLIPConfig, base_dir: str | os.PathLike | None = None) -> tuple[CLIPConfig, Any, list[str]]:
    """A copy of ``config`` with what it leaves to the towers filled in, the text tower's tokenizer
    (``None`` for cliplab's own text transformer) and notes saying what was filled from where."""
    config = copy.deepcopy(config)
    notes: list[str] = []
    tokenizer = None
    if isinstance(config.vision, TimmVisionConfig):
        from .timm_tower import resolve_timm_config

        notes += resolve_timm_config(config.vision)
        config.vision.pretrained = _normalised_source(config.vision.pretrained, base_dir)
    if isinstance(config.text, HFTextConfig):
        from .hf_tokenizer import HFTokenizer
        from .hf_tower import resolve_hf_config, tower_folder

        folder = tower_folder(config.text, base_dir)
        config.text.model_name = _normalised_source(config.text.model_name, base_dir)
        tokenizer = HFTokenizer.from_folder(folder, config.text.context_length)
        notes += resolve_hf_config(config.text, folder, tokenizer)
        tokenizer = tokenizer.with_context_length(config.text.context_length)
    return config, tokenizer, notes


def build(config: CLIPConfig, base_dir: str | os.PathLike | None = None, pretrained: bool = True) -> BuiltModel:
    """The model of ``config`` with its towers' pretrained weights (``pretrained``; the heads and
    cliplab's own towers are initialised from :data:`HEAD_SEED`). Relative paths in the config resolve
    against ``base_dir``."""
    from ..clip import CLIP

    config, tokenizer, notes = resolve_config(config, base_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        model = CLIP(config)
    if pretrained and isinstance(config.vision, TimmVisionConfig):
        from .timm_tower import load_pretrained_trunk

        note = load_pretrained_trunk(model.visual, base_dir)
        notes += [note] if note else []
    if isinstance(config.text, HFTextConfig):
        from .hf_tower import load_pretrained_transformer, tower_folder

        model.text.tokenizer = tokenizer
        if pretrained and config.text.pretrained:
            notes.append(load_pretrained_transformer(model.text, tower_folder(config.text, base_dir)))
    from ...preprocess import PreprocessConfig

    preprocess = PreprocessConfig.from_dict(config.preprocess()).to_dict()
    return BuiltModel(model.eval(), preprocess, tokenizer, notes)
