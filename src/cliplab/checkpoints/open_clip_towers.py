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
    from .open_clip import text_to_open_clip, vision_to_open_clip

    folder.mkdir(parents=True, exist_ok=True)
    model_cfg: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": vision_cfg if vision_cfg is not None else vision_to_open_clip(config.own_vision),
        "text_cfg": text_cfg if text_cfg is not None else text_to_open_clip(config.own_text),
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


# --------------------------------------------------------------------------- reading


def is_towers_config(model_cfg: dict[str, Any]) -> bool:
    """Whether an OpenCLIP ``model_cfg`` names a timm image tower or a Hugging Face text tower."""
    return bool(model_cfg.get("vision_cfg", {}).get("timm_model_name")) or bool(
        model_cfg.get("text_cfg", {}).get("hf_model_name")
    )


_THEIR_POOLERS = {theirs: ours for ours, theirs in _OPEN_CLIP_POOLERS.items()}
#: OpenCLIP's default pooler per text tower type (open_clip/hf_configs.py), used when the config names none.
_DEFAULT_POOLERS = {"bert": "cls_pooler", "roberta": "mean_pooler", "xlm-roberta": "mean_pooler"}


def _timm_from_open_clip(cfg: dict[str, Any], preprocess: dict[str, Any]) -> TimmVisionConfig:
    from ..model.towers.configs import HeadConfig

    pool = cfg.get("timm_pool", "avg")
    if pool in ("abs_attn", "rot_attn"):
        raise CheckpointError(f"OpenCLIP's {pool} pooling of timm towers is not supported by cliplab")
    proj = cfg.get("timm_proj", "linear")
    if proj not in ("linear", "mlp", "none"):
        raise CheckpointError(
            f"OpenCLIP timm_proj={proj!r} (the timm classifier as projection) is not supported; cliplab reads "
            "linear, mlp and none"
        )
    kwargs = {"drop_path_rate": cfg["timm_drop_path"]} if cfg.get("timm_drop_path") is not None else {}
    size = cfg.get("image_size", 224)
    return TimmVisionConfig(
        str(cfg["timm_model_name"]),
        image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        pool=pool,
        model_kwargs=kwargs,
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
        head=HeadConfig(type=proj, dropout=float(cfg.get("timm_drop", 0.0)), bias=bool(cfg.get("timm_proj_bias"))),
    )


def _hf_from_open_clip(cfg: dict[str, Any], folder: Path) -> tuple[HFTextConfig, Any]:
    from ..model.towers.configs import HeadConfig
    from ..model.towers.hf_tokenizer import HFTokenizer, is_tokenizer_folder
    from ..model.towers.hf_tower import resolve_hf_config, tower_folder

    name = str(cfg["hf_model_name"])
    local = folder if (folder / "config.json").is_file() else None
    text = HFTextConfig(name, pretrained=False, context_length=int(cfg.get("context_length", 77)))
    source = local or tower_folder(text)
    tokenizer_source = (
        folder if is_tokenizer_folder(folder) else tower_folder(HFTextConfig(str(cfg.get("hf_tokenizer_name") or name)))
    )
    try:
        tokenizer = HFTokenizer.from_folder(tokenizer_source, text.context_length)
    except FileNotFoundError as error:
        raise CheckpointError(str(error)) from None
    resolve_hf_config(text, source, tokenizer)
    pooler = cfg.get("hf_pooler_type") or _DEFAULT_POOLERS.get(text.model_type, "mean_pooler")
    if pooler not in _THEIR_POOLERS:
        raise CheckpointError(
            f"OpenCLIP hf_pooler_type {pooler!r} is not supported (cliplab reads {sorted(_THEIR_POOLERS)})"
        )
    text.pooling = _THEIR_POOLERS[pooler]
    proj = cfg.get("hf_proj_type", "mlp")
    if proj not in ("linear", "mlp", None):
        raise CheckpointError(f"OpenCLIP hf_proj_type {proj!r} is not supported (cliplab reads linear, mlp, none)")
    text.head = HeadConfig(type=proj or "none")
    if name.count("/") == 1 and local is None and not Path(name).exists():
        text.model_name = HUB_PREFIX + name
    return text, tokenizer


def _ours(key: str) -> str:
    for ours, theirs in (
        ("visual.head.fc1.", "visual.head.mlp.fc1."),
        ("visual.head.fc2.", "visual.head.mlp.fc2."),
        ("text.head.fc1.", "text.proj.0."),
        ("text.head.fc2.", "text.proj.2."),
        ("text.head.proj.", "text.proj."),
    ):
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def read_open_clip_towers(folder: Path, meta: dict[str, Any], weights: Path) -> Any:
    """A :class:`LoadedCheckpoint` of an OpenCLIP folder with ``timm_model_name`` / ``hf_model_name``
    towers (the text tower's config.json and tokenizer from the folder, else from ``hf_model_name``)."""
    from ..preprocess import PreprocessConfig
    from .base import LoadedCheckpoint
    from .infer import normalise_state_dict
    from .open_clip import config_from_open_clip
    from .torchfiles import load_tensors

    model_cfg = dict(meta["model_cfg"])
    vision_cfg, text_cfg = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    pre = meta.get("preprocess_cfg", {})
    size = pre.get("size", vision_cfg.get("image_size", 224))
    preprocess = PreprocessConfig.from_dict(
        {
            "image_size": int(size[0] if isinstance(size, (list, tuple)) else size),
            **{k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pre},
        }
    ).to_dict()
    native = config_from_open_clip(
        {
            **{k: v for k, v in model_cfg.items() if k != "custom_text"},
            "vision_cfg": {} if vision_cfg.get("timm_model_name") else vision_cfg,
            "text_cfg": {} if text_cfg.get("hf_model_name") else text_cfg,
        }
    )
    tokenizer = None
    vision: Any = native.vision
    text: Any = native.text
    notes = [f"architecture from {CONFIG_FILE}"]
    if vision_cfg.get("timm_model_name"):
        vision = _timm_from_open_clip(vision_cfg, preprocess)
    if text_cfg.get("hf_model_name"):
        text, tokenizer = _hf_from_open_clip(text_cfg, folder)
        notes.append(f"text tower {text.model_type}, {text.pooling} pooling, tokenizer from {folder}")
    config = CLIPConfig(embed_dim=int(model_cfg["embed_dim"]), vision=vision, text=text, quick_gelu=native.quick_gelu)
    state_dict = {_ours(k): v for k, v in normalise_state_dict(load_tensors(weights)).items()}
    return LoadedCheckpoint(state_dict, config, "open_clip", preprocess, notes, tokenizer=tokenizer)
