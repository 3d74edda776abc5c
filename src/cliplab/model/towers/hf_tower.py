"""A text tower from Hugging Face transformers: the ``AutoModel`` of a ``config.json``, pooled
(mean, CLS, the tower's pooler, or the end token), then a projection head. Parameters:
``transformer.*`` (transformers' own names, as OpenCLIP's ``HFTextEncoder`` holds them) and ``head.*``.

Padding is told by its id, as OpenCLIP does (``attention_mask = ids != pad_token_id``), and each batch
is computed only up to its longest text: padding never changes a row's features under the mask.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...extras import require
from .configs import HFTextConfig
from .heads import ProjectionHead

#: Hub files a text tower needs (config, tokenizer, weights), fetched when it is named by a hub id.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model.bin"]
_PROVENANCE = ("_name_or_path", "transformers_version", "_commit_hash")


def import_transformers() -> Any:
    return require("transformers", "towers", "a text tower from Hugging Face transformers")


def hf_config_object(hf_config: dict[str, Any]) -> Any:
    """The transformers ``PretrainedConfig`` of a ``config.json`` dict; an unknown ``model_type`` is a
    ``ValueError`` naming the closest known ones."""
    transformers = import_transformers()
    mapping = transformers.CONFIG_MAPPING
    model_type = hf_config.get("model_type")
    if not model_type:
        raise ValueError("the text tower's config.json has no model_type (e.g. 'bert', 'roberta', 'xlm-roberta')")
    if model_type not in mapping:
        close = difflib.get_close_matches(str(model_type), list(mapping.keys()), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown Hugging Face architecture {model_type!r}: transformers {transformers.__version__} has no "
            f"model_type {model_type!r}{hint}"
        )
    config = mapping[model_type].from_dict({k: v for k, v in hf_config.items() if k not in _PROVENANCE})
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"the {model_type} text tower is an encoder-decoder model; cliplab takes encoder-only text towers "
            "(BERT, RoBERTa, XLM-R, MiniLM, MPNet, ...)"
        )
    return config


def create_transformer(config: HFTextConfig) -> nn.Module:
    """transformers' model for the tower (random weights), with BERT's pooler layer only for ``pooler``
    pooling (as OpenCLIP builds it)."""
    transformers = import_transformers()
    hf_config = hf_config_object(config.hf_config)
    model_class = transformers.AutoModel._model_mapping[type(hf_config)]
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = config.pooling == "pooler"
    elif config.pooling == "pooler":
        raise ValueError(f"the {config.model_type} text tower has no pooler layer: choose pooling mean, cls or end")
    return transformers.AutoModel.from_config(hf_config, **kwargs)


class HFTextTower(nn.Module):
    def __init__(self, config: HFTextConfig, embed_dim: int) -> None:
        super().__init__()
        if not config.hf_config:
            raise ValueError(
                "the text tower's config has no hf_config yet: build the model with cliplab.build() (or load its "
                "config file), which reads the tower's config.json"
            )
        self.config = config
        self.transformer: Any = create_transformer(config)
        pad = config.hf_config.get("pad_token_id")
        if pad is None:
            raise ValueError(f"the {config.model_type} text tower's config.json has no pad_token_id")
        self.pad_token_id = int(pad)
        self.pooling = config.pooling
        self.head = ProjectionHead(config.head, config.width, embed_dim, "text")
        self.tokenizer: Any = None  # the HFTokenizer, attached when the model is built or loaded

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The pooled features, before the head, of right-padded ids ``[N, L]``."""
        mask = token_ids != self.pad_token_id
        if token_ids.shape[0] and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            length = max(int(mask.sum(dim=1).max()), 1)  # the batch's longest text: the rest is padding
            token_ids, mask = token_ids[:, :length], mask[:, :length]
        out = self.transformer(input_ids=token_ids, attention_mask=mask.long())
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "end":
            last = mask.long().sum(dim=1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(token_ids))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.transformer.gradient_checkpointing_enable()
        elif getattr(self.transformer, "is_gradient_checkpointing", False):
            self.transformer.gradient_checkpointing_disable()


def tower_folder(config: HFTextConfig, base_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of ``config.model_name`` (a path, ``package:...`` or a hub id)."""
    from .sources import resolve_source

    folder = resolve_source(config.model_name, base_dir, hub_files=HUB_FILES)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"a Hugging Face text tower is a folder (config.json, weights, tokenizer); {folder} is not"
        )
    return folder


def resolve_hf_config(config: HFTextConfig, folder: Path, tokenizer: Any) -> list[str]:
    """Fill the config from the tower's folder: ``hf_config`` from its ``config.json``, the context
    length from the tower (its tokenizer's ``model_max_length`` and its position embeddings), the
    padding id from the tokenizer where the config has none. Returns notes."""
    import json

    notes = []
    if not config.hf_config:
        path = folder / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: it is not a Hugging Face model folder")
        raw = json.loads(path.read_text(encoding="utf-8"))
        config.hf_config = {k: v for k, v in hf_config_object(raw).to_dict().items() if k not in _PROVENANCE}
        notes.append(f"text tower architecture from {path}")
    hf = config.hf_config
    if hf.get("pad_token_id") is None:
        hf["pad_token_id"] = tokenizer.pad_token_id
    elif int(hf["pad_token_id"]) != tokenizer.pad_token_id:
        raise ValueError(
            f"the text tower's pad_token_id is {hf['pad_token_id']} but its tokenizer pads with "
            f"{tokenizer.pad_token_id}: they must agree (padding is masked by its id)"
        )
    if not config.context_length:
        positions = int(hf.get("max_position_embeddings") or 0)
        if positions and hf.get("model_type") in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
            positions -= int(hf["pad_token_id"]) + 1  # RoBERTa numbers positions from pad + 1
        limits = [n for n in (positions, tokenizer.model_max_length) if n]
        if not limits:
            raise ValueError("the text tower records no maximum length: give it a context_length")
        config.context_length = min(limits)
        notes.append(f"text context length {config.context_length} from the tower")
    return notes


def load_pretrained_transformer(tower: HFTextTower, folder: Path) -> str:
    """Fill ``tower.transformer`` with the weights in ``folder`` (every tensor checked); returns a note."""
    from .weights import fit_by_name, read_weights

    tensors = read_weights(folder)
    prefix = getattr(tower.transformer, "base_model_prefix", "")
    state = fit_by_name(
        tensors, tower.transformer, f"{folder} (the text tower's weights)", f"{prefix}." if prefix else ""
    )
    tower.transformer.load_state_dict(state, strict=True)
    return f"text tower weights: {folder}"
