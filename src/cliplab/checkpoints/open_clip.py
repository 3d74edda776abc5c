"""OpenCLIP hub folders: ``open_clip_config.json`` (model and preprocessing config) beside
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..model.configs import CLIPConfig, TextConfig, VisionConfig
from .base import CheckpointError, LoadedCheckpoint
from .open_clip_towers import is_towers_config, read_open_clip_towers
from .openai import default_preprocess, read_state_dict_file

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)

# OpenCLIP options cliplab's model implements only at these values (the OpenAI architecture).
_SUPPORTED_VISION = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "timm_model_name": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_SUPPORTED_TEXT = {
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_IGNORED = {
    "patch_dropout",
    "output_tokens",
    "tokenizer_kwargs",
    "tokenizer_mode",
    "block_type",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "eos_id",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
}


def is_open_clip_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _check_supported(cfg: dict[str, Any], supported: dict[str, Any], known: set[str], tower: str) -> None:
    for key, value in cfg.items():
        if key in supported:
            if value != supported[key] and not (supported[key] is None and value in ({}, None)):
                raise CheckpointError(
                    f"OpenCLIP {tower} option {key}={value!r} is not supported by cliplab's CLIP "
                    f"architecture (supported: {supported[key]!r})"
                )
        elif key not in known and key not in _IGNORED:
            raise CheckpointError(f"unknown OpenCLIP {tower} option {key!r}")


def config_from_open_clip(model_cfg: dict[str, Any]) -> CLIPConfig:
    """Translate OpenCLIP's ``model_cfg`` into a :class:`CLIPConfig`, refusing options cliplab lacks."""
    vision_cfg, text_cfg = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    for key in model_cfg:
        if key not in {
            "embed_dim",
            "vision_cfg",
            "text_cfg",
            "quick_gelu",
            "cast_dtype",
            "init_logit_scale",
            "init_logit_bias",
            "nonscalar_logit_scale",
            "custom_text",
        }:
            raise CheckpointError(f"OpenCLIP model option {key!r} is not supported by cliplab")
    if model_cfg.get("init_logit_bias") is not None:
        raise CheckpointError("OpenCLIP SigLIP models (init_logit_bias) are not supported for loading yet")
    _check_supported(
        vision_cfg,
        _SUPPORTED_VISION,
        {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
        "vision",
    )
    _check_supported(
        text_cfg, _SUPPORTED_TEXT, {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}, "text"
    )
    head_width = vision_cfg.get("head_width", 64)
    layers = vision_cfg.get("layers", 12)
    width = vision_cfg.get("width", 768)
    image_size = vision_cfg.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise CheckpointError(f"non-square image size {image_size} is not supported")
        image_size = image_size[0]
    is_resnet = isinstance(layers, (list, tuple))
    vision = VisionConfig(
        image_size=image_size,
        layers=tuple(layers) if is_resnet else layers,
        width=width,
        patch_size=None if is_resnet else vision_cfg.get("patch_size", 16),
        heads=width * 32 // head_width if is_resnet else width // head_width,
        mlp_ratio=vision_cfg.get("mlp_ratio", 4.0),
    )
    text = TextConfig(
        context_length=text_cfg.get("context_length", 77),
        vocab_size=text_cfg.get("vocab_size", 49408),
        width=text_cfg.get("width", 512),
        heads=text_cfg.get("heads", 8),
        layers=text_cfg.get("layers", 12),
        mlp_ratio=text_cfg.get("mlp_ratio", 4.0),
    )
    return CLIPConfig(
        embed_dim=model_cfg["embed_dim"], vision=vision, text=text, quick_gelu=bool(model_cfg.get("quick_gelu", False))
    )


def vision_to_open_clip(vision: VisionConfig) -> dict[str, Any]:
    """OpenCLIP's ``vision_cfg`` of cliplab's own image tower."""
    vision_cfg: dict[str, Any] = {"image_size": vision.image_size, "width": vision.width, "mlp_ratio": vision.mlp_ratio}
    if vision.is_resnet:
        vision_cfg["layers"] = list(vision.layers)  # type: ignore[arg-type]
        vision_cfg["head_width"] = vision.width * 32 // vision.heads  # type: ignore[operator]
    else:
        vision_cfg.update(layers=vision.layers, patch_size=vision.patch_size, head_width=vision.width // vision.heads)  # type: ignore[operator]
    return vision_cfg


def text_to_open_clip(text: TextConfig) -> dict[str, Any]:
    """OpenCLIP's ``text_cfg`` of cliplab's own text transformer."""
    return {
        "context_length": text.context_length,
        "vocab_size": text.vocab_size,
        "width": text.width,
        "heads": text.heads,
        "layers": text.layers,
        "mlp_ratio": text.mlp_ratio,
    }


def config_to_open_clip(config: CLIPConfig) -> dict[str, Any]:
    return {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": vision_to_open_clip(config.own_vision),
        "text_cfg": text_to_open_clip(config.own_text),
    }


def read_open_clip_folder(folder: Path) -> LoadedCheckpoint:
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        model_cfg = meta["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} is not an OpenCLIP config with a 'model_cfg' ({error})"
        ) from error
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has {CONFIG_FILE} but no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if is_towers_config(model_cfg):  # timm / Hugging Face towers: open_clip_towers.py
        try:
            return read_open_clip_towers(folder, meta, weights)
        except (ValueError, FileNotFoundError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{folder}: {error}") from None
    config = config_from_open_clip(model_cfg)
    tensors = read_state_dict_file(weights, quick_gelu=config.quick_gelu)
    notes = [f"architecture and activation from {CONFIG_FILE}"]
    if tensors.config.vision != config.vision or tensors.config.text != config.text:
        # Head counts are not visible in shapes; everything else must agree.
        inferred, declared = tensors.config.to_dict(), config.to_dict()
        for tower in ("vision", "text"):
            for key, value in declared[tower].items():
                if key != "heads" and inferred[tower][key] != value:
                    raise CheckpointError(
                        f"{weights.name} has {tower} {key}={inferred[tower][key]} but {CONFIG_FILE} says {value}"
                    )
    preprocess = default_preprocess(config.vision.image_size)
    pre_cfg = meta.get("preprocess_cfg", {})
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if key in pre_cfg:
            preprocess[key] = tuple(pre_cfg[key]) if isinstance(pre_cfg[key], list) else pre_cfg[key]
    if "size" in pre_cfg:
        size = pre_cfg["size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        if size != config.vision.image_size:
            notes.append(f"preprocess size {size} differs from the model's image size {config.vision.image_size}")
        preprocess["image_size"] = size
    return LoadedCheckpoint(tensors.state_dict, config, "open_clip", preprocess, notes)


def write_open_clip_folder(
    state_dict: dict[str, torch.Tensor], config: CLIPConfig, folder: Path, preprocess: dict | None = None
) -> None:
    """Write a folder that ``open_clip.create_model_and_transforms('local-dir:FOLDER')`` (or an
    ``hf-hub:`` repository with the same files) loads."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = preprocess or default_preprocess(config.vision.image_size)
    meta = {
        "model_cfg": config_to_open_clip(config),
        "preprocess_cfg": {
            "mean": list(preprocess["mean"]),
            "std": list(preprocess["std"]),
            "interpolation": preprocess.get("interpolation", "bicubic"),
            "resize_mode": preprocess.get("resize_mode", "shortest"),
            "size": preprocess.get("image_size", config.vision.image_size),
        },
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(folder / "open_clip_model.safetensors")
    )
