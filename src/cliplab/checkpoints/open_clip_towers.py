"""OpenCLIP folders for models with towers from other libraries: its ``timm_model_name`` vision configs
(``TimmModel``) and ``hf_model_name`` text configs (``HFTextEncoder``), and the refusals of the formats
that cannot hold such towers.

================================  ==========================================
cliplab                           OpenCLIP
================================  ==========================================
``visual.trunk.*``                ``visual.trunk.*``
``visual.head.proj``              ``visual.head.proj`` (``timm_proj = "linear"``)
``visual.head.fc1`` / ``fc2``     ``visual.head.mlp.fc1`` / ``fc2`` (``"mlp"``)
``text.transformer.*``            ``text.transformer.*``
``text.head.proj``                ``text.proj`` (``hf_proj_type = "linear"``)
``text.head.fc1`` / ``fc2``       ``text.proj.0`` / ``text.proj.2`` (``"mlp"``)
================================  ==========================================

The folder also holds the text tower's ``config.json`` and tokenizer files, so that
``open_clip.create_model_and_transforms("local-dir:FOLDER")`` and ``open_clip.get_tokenizer(...)`` find
them. ``hf_model_name`` names the tower's hub repository when it came from the hub (``hf-hub:ORG/NAME``),
and otherwise the folder itself (its absolute path: move the folder, and that entry must follow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..model.configs import CLIPConfig
from ..model.towers.configs import HFTextConfig, TimmVisionConfig
from ..model.towers.sources import HUB_PREFIX
from .base import CheckpointError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
#: Text tower model types OpenCLIP's HFTextEncoder knows (open_clip/hf_configs.py: arch_dict), less the
#: encoder-decoder ones cliplab does not take.
OPEN_CLIP_HF_TYPES = ("bert", "roberta", "xlm-roberta")
_OPEN_CLIP_POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler", "pooler": "cls_pooler"}
_TIMM_KWARGS = {"drop_path_rate": "timm_drop_path"}


def _towers(config: CLIPConfig) -> str:
    parts = []
    if isinstance(config.vision, TimmVisionConfig):
        parts.append(f"a timm image tower ({config.vision.model_name})")
    if isinstance(config.text, HFTextConfig):
        parts.append(f"a Hugging Face text tower ({config.text.model_type or config.text.model_name})")
    return " and ".join(parts)


def refusal(config: CLIPConfig, format: str) -> str:
    """Why ``format`` cannot hold this model, and which formats can."""
    layout = {
        "huggingface": "the Hugging Face CLIPModel layout holds only its own ViT image tower and causal text "
        "transformer",
        "openai": "OpenAI's state dict holds only OpenAI's architectures (its ViT or ResNet and causal text "
        "transformer)",
    }[format]
    return (
        f"cannot write this model in the {format} format: {layout}, and this model has {_towers(config)}. "
        "Write it as 'cliplab' (everything) or 'open_clip' (its timm_model_name / hf_model_name towers)"
    )


def _refuse(reason: str) -> CheckpointError:
    return CheckpointError(f"cannot write this model in the open_clip format: {reason}. Write it as 'cliplab'")


def _vision_cfg(vision: TimmVisionConfig, embed_dim: int) -> dict[str, Any]:
    extra = {k: v for k, v in vision.model_kwargs.items() if k not in _TIMM_KWARGS}
    if extra:
        raise _refuse(f"OpenCLIP's TimmModel passes no timm arguments like {sorted(extra)} to create_model")
    cfg: dict[str, Any] = {
        "timm_model_name": vision.model_name,
        "timm_model_pretrained": False,
        "timm_pool": vision.pool,
        "image_size": vision.image_size,
    }
    cfg.update({_TIMM_KWARGS[k]: v for k, v in vision.model_kwargs.items()})
    head = vision.head
    if head.type == "none":
        cfg["timm_proj"] = "none"
    elif head.type == "linear":
        cfg.update(timm_proj="linear", timm_proj_bias=head.bias, timm_drop=head.dropout)
    else:
        if head.hidden_dim not in (0, 2 * embed_dim) or head.hidden_bias is False:
            raise _refuse(
                f"OpenCLIP's image MLP head has {2 * embed_dim} hidden units with a bias; this one has "
                f"{head.hidden_dim}{'' if head.hidden_bias is not False else ' without a bias'}"
            )
        cfg.update(timm_proj="mlp", timm_proj_bias=head.bias, timm_drop=head.dropout)
    return cfg


def _text_cfg(text: HFTextConfig, embed_dim: int, hf_model_name: str) -> dict[str, Any]:
    if text.model_type not in OPEN_CLIP_HF_TYPES:
        raise _refuse(
            f"OpenCLIP's HFTextEncoder knows the text tower types {', '.join(OPEN_CLIP_HF_TYPES)}, not "
            f"{text.model_type!r}"
        )
    if text.pooling not in _OPEN_CLIP_POOLERS:
        raise _refuse(f"OpenCLIP's HFTextEncoder has no {text.pooling!r} pooling (it has mean, cls and pooler)")
    head, width = text.head, text.width
    if head.bias:
        raise _refuse("OpenCLIP's text projection has no bias; this text head has one")
    proj: str | None
    if head.type == "none":
        proj = None
    elif head.type == "linear":
        proj = "linear"
    else:
        if head.hidden_dim not in (0, (width + embed_dim) // 2) or head.hidden_bias:
            raise _refuse(
                f"OpenCLIP's text MLP head has {(width + embed_dim) // 2} hidden units without a bias; this one "
                f"has {head.hidden_dim}{' with a bias' if head.hidden_bias else ''}"
            )
        proj = "mlp"
    if proj is None and width != embed_dim:
        raise _refuse(f"without a head, the text width {width} must equal embed_dim {embed_dim}")
    return {
        "hf_model_name": hf_model_name,
        "hf_tokenizer_name": hf_model_name,
        "hf_model_pretrained": False,
        "hf_pooler_type": _OPEN_CLIP_POOLERS[text.pooling],
        "hf_proj_type": proj,
        "context_length": text.context_length,
    }


def _native_vision_cfg(config: CLIPConfig) -> dict[str, Any]:
    from .open_clip import config_to_open_clip

    return config_to_open_clip(config)["vision_cfg"]


def _native_text_cfg(config: CLIPConfig) -> dict[str, Any]:
    from .open_clip import config_to_open_clip

    return config_to_open_clip(config)["text_cfg"]


def _rename(key: str) -> str:
    for ours, theirs in (
        ("visual.head.fc1.", "visual.head.mlp.fc1."),
        ("visual.head.fc2.", "visual.head.mlp.fc2."),
        ("text.head.proj.", "text.proj."),
        ("text.head.fc1.", "text.proj.0."),
        ("text.head.fc2.", "text.proj.2."),
    ):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def write_open_clip_towers(
    state_dict: dict[str, torch.Tensor],
    config: CLIPConfig,
    folder: Path,
    preprocess: dict | None = None,
    tokenizer: Any = None,
) -> None:
    """Write a folder that ``open_clip.create_model_and_transforms('local-dir:FOLDER')`` loads, with
    ``open_clip.get_tokenizer('local-dir:FOLDER')`` for its text tower; raises :class:`CheckpointError`
    (before writing anything) for what OpenCLIP cannot express."""
    vision, text = config.vision, config.text
    vision_cfg = _vision_cfg(vision, config.embed_dim) if isinstance(vision, TimmVisionConfig) else None
    text_cfg = None
    if isinstance(text, HFTextConfig):
        if tokenizer is None:
            raise _refuse("the Hugging Face text tower's tokenizer is missing")
        hub = text.model_name.startswith(HUB_PREFIX)
        name = text.model_name.removeprefix(HUB_PREFIX) if hub else str(folder.resolve())
        text_cfg = _text_cfg(text, config.embed_dim, name)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": vision_cfg if vision_cfg is not None else _native_vision_cfg(config),
        "text_cfg": text_cfg if text_cfg is not None else _native_text_cfg(config),
    }
    if text_cfg is not None:
        model_cfg["custom_text"] = True
    preprocess = preprocess or {}
    meta = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "size": preprocess.get("image_size", config.vision.image_size),
            "mean": list(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            "std": list(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
            "interpolation": preprocess.get("interpolation", "bicubic"),
            "resize_mode": preprocess.get("resize_mode", "shortest"),
        },
    }
    if isinstance(text, HFTextConfig):
        (folder / "config.json").write_text(json.dumps(text.hf_config, indent=2) + "\n")
        tokenizer.save(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    tensors = {_rename(k): v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
