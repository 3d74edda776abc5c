"""Read and write CLIP checkpoints in the Hugging Face ``transformers`` layout.

A Hugging Face CLIP folder holds ``config.json`` (a ``CLIPConfig`` with ``text_config`` and
``vision_config``), the weights (``model.safetensors``, ``pytorch_model.bin`` or a sharded
variant with an ``*.index.json``), usually ``preprocessor_config.json`` (a ``CLIPImageProcessor``)
and the tokenizer files (``vocab.json``, ``merges.txt``, ...).

The two layouts hold the same numbers under different names:

==========================================  ==========================================
cliplab / OpenAI                            transformers
==========================================  ==========================================
``visual.conv1.weight``                     ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``                  ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``             ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre`` / ``visual.ln_post``      ``vision_model.pre_layrnorm`` / ``vision_model.post_layernorm``
``visual.proj`` ``[width, embed]``          ``visual_projection.weight`` ``[embed, width]`` (transposed)
``token_embedding.weight``                  ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                    ``text_model.embeddings.position_embedding.weight``
``ln_final``                                ``text_model.final_layer_norm``
``text_projection`` ``[width, embed]``      ``text_projection.weight`` ``[embed, width]`` (transposed)
``logit_scale``                             ``logit_scale``
``...resblocks.{i}.attn.in_proj_weight``    ``...layers.{i}.self_attn.{q,k,v}_proj.weight`` (stacked q; k; v)
``...resblocks.{i}.attn.in_proj_bias``      ``...layers.{i}.self_attn.{q,k,v}_proj.bias``
``...resblocks.{i}.attn.out_proj``          ``...layers.{i}.self_attn.out_proj``
``...resblocks.{i}.ln_1`` / ``ln_2``        ``...layers.{i}.layer_norm1`` / ``layer_norm2``
``...resblocks.{i}.mlp.c_fc`` / ``c_proj``  ``...layers.{i}.mlp.fc1`` / ``fc2``
==========================================  ==========================================

where the vision blocks live under ``visual.transformer.resblocks`` / ``vision_model.encoder.layers``
and the text blocks under ``transformer.resblocks`` / ``text_model.encoder.layers``. The
``position_ids`` buffers some transformers versions saved are dropped.

Hugging Face CLIP has Vision Transformer image towers only, so ResNet models cannot be written in
this format (use the OpenCLIP format for them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.clip import CLIP
from ..model.configs import CLIPConfig, TextConfig, VisionConfig
from ..preprocess import MEAN as OPENAI_MEAN
from ..preprocess import STD as OPENAI_STD
from ..preprocess import PreprocessConfig
from ..tokenizer import EOT_TEXT as EOT_TOKEN
from ..tokenizer import SOT_TEXT as SOT_TOKEN
from ..tokenizer import default_tokenizer
from .base import CheckpointError, LoadedCheckpoint
from .infer import check_shapes
from .torchfiles import load_tensors

__all__ = ["is_huggingface_folder", "read_huggingface", "write_huggingface"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
PYTORCH_INDEX_NAME = "pytorch_model.bin.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
# Preference order when several weight files are present.
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, PYTORCH_NAME, PYTORCH_INDEX_NAME)

# cliplab's LayerNorm uses torch's default epsilon.
LAYER_NORM_EPS = 1e-5
# transformers' initial value of logit_scale, log(1 / 0.07); only the config default, the trained
# value is in the weights.
LOGIT_SCALE_INIT_VALUE = 2.6592

OPENAI_VOCAB_SIZE = 49408
OPENAI_SOT_ID = 49406
OPENAI_EOT_ID = 49407

# PIL resampling filter ids (as CLIPImageProcessor stores them) <-> cliplab interpolation names.
_RESAMPLE_TO_NAME = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_NAME_TO_RESAMPLE = {name: code for code, name in _RESAMPLE_TO_NAME.items()}

# transformers' defaults for fields a config.json may leave out (CLIPTextConfig / CLIPVisionConfig).
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_PROJECTION_DIM_DEFAULT = 512

_ACTIVATIONS = {"quick_gelu": True, "gelu": False}

# Conversion kinds: the tensor is copied, transposed, or (attention input projections) split into
# / stacked from q, k, v.
_COPY, _TRANSPOSE, _QKV = "copy", "transpose", "qkv"


# --------------------------------------------------------------------------- key mapping


def _key_pairs(config: CLIPConfig) -> Iterator[tuple[str, tuple[str, ...], str]]:
    """Every parameter of a ViT CLIP as ``(openai_key, hf_keys, kind)``.

    ``hf_keys`` has one name, or three (q, k, v) for the stacked attention projections.
    """
    yield "visual.conv1.weight", ("vision_model.embeddings.patch_embedding.weight",), _COPY
    yield "visual.class_embedding", ("vision_model.embeddings.class_embedding",), _COPY
    yield "visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), _COPY
    for suffix in ("weight", "bias"):
        yield f"visual.ln_pre.{suffix}", (f"vision_model.pre_layrnorm.{suffix}",), _COPY
        yield f"visual.ln_post.{suffix}", (f"vision_model.post_layernorm.{suffix}",), _COPY
    yield "visual.proj", ("visual_projection.weight",), _TRANSPOSE
    yield "token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), _COPY
    yield "positional_embedding", ("text_model.embeddings.position_embedding.weight",), _COPY
    for suffix in ("weight", "bias"):
        yield f"ln_final.{suffix}", (f"text_model.final_layer_norm.{suffix}",), _COPY
    yield "text_projection", ("text_projection.weight",), _TRANSPOSE
    yield "logit_scale", ("logit_scale",), _COPY

    towers = (
        ("visual.transformer.resblocks", "vision_model.encoder.layers", config.own_vision.layers),
        ("transformer.resblocks", "text_model.encoder.layers", config.own_text.layers),
    )
    for openai_prefix, hf_prefix, depth in towers:
        assert isinstance(depth, int)
        for i in range(depth):
            o, h = f"{openai_prefix}.{i}", f"{hf_prefix}.{i}"
            for suffix in ("weight", "bias"):
                yield (
                    f"{o}.attn.in_proj_{suffix}",
                    tuple(f"{h}.self_attn.{p}_proj.{suffix}" for p in ("q", "k", "v")),
                    _QKV,
                )
                yield f"{o}.attn.out_proj.{suffix}", (f"{h}.self_attn.out_proj.{suffix}",), _COPY
                yield f"{o}.ln_1.{suffix}", (f"{h}.layer_norm1.{suffix}",), _COPY
                yield f"{o}.ln_2.{suffix}", (f"{h}.layer_norm2.{suffix}",), _COPY
                yield f"{o}.mlp.c_fc.{suffix}", (f"{h}.mlp.fc1.{suffix}",), _COPY
                yield f"{o}.mlp.c_proj.{suffix}", (f"{h}.mlp.fc2.{suffix}",), _COPY


def _openai_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``cliplab.model.CLIP(config)``, computed without allocating memory."""
    try:
        with torch.device("meta"):
            model = CLIP(config)
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise CheckpointError(f"the architecture cannot be built by cliplab: {exc}") from exc
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _hf_shapes(config: CLIPConfig, openai_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Expected shapes of the transformers tensors for ``config``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for openai_key, hf_keys, kind in _key_pairs(config):
        shape = openai_shapes[openai_key]
        if kind == _TRANSPOSE:
            shapes[hf_keys[0]] = tuple(reversed(shape))
        elif kind == _QKV:
            for hf_key in hf_keys:
                shapes[hf_key] = (shape[0] // 3, *shape[1:])
        else:
            shapes[hf_keys[0]] = shape
    return shapes


# --------------------------------------------------------------------------- config


def _mlp_ratio(hidden: int, intermediate: int, where: str) -> float:
    """A float ``r`` with ``int(hidden * r) == intermediate`` (cliplab's rule for the MLP width)."""
    ratio = intermediate / hidden
    for _ in range(4):
        if int(hidden * ratio) == intermediate:
            return ratio
        ratio = math.nextafter(ratio, math.inf)
    raise CheckpointError(f"{where}: intermediate_size {intermediate} cannot be expressed as hidden_size x mlp_ratio")


def _square(value: Any, name: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{where}: {name} {value!r} is not square; cliplab supports square images only")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _int_field(cfg: Mapping[str, Any], name: str, where: str) -> int:
    value = cfg[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _sub_config(raw: Mapping[str, Any], name: str, defaults: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """``raw[name]`` merged with the legacy ``<name>_dict`` and transformers' defaults."""
    cfg = raw.get(name) or {}
    legacy = raw.get(f"{name}_dict") or {}
    if not isinstance(cfg, dict) or not isinstance(legacy, dict):
        raise CheckpointError(f"config.json: {name} must be a JSON object")
    merged = {**cfg, **legacy}
    defaulted = sorted(k for k in defaults if merged.get(k) is None)
    if defaulted:
        notes.append(
            f"config.json {name} omits {', '.join(defaulted)}; used transformers' defaults "
            + ", ".join(f"{k}={defaults[k]!r}" for k in defaulted)
        )
    return {**defaults, **{k: v for k, v in merged.items() if v is not None}}


def _config_from_hf(raw: Mapping[str, Any], notes: list[str]) -> CLIPConfig:
    """cliplab's :class:`CLIPConfig` for a transformers ``CLIPConfig`` dict."""
    text = _sub_config(raw, "text_config", _TEXT_DEFAULTS, notes)
    vision = _sub_config(raw, "vision_config", _VISION_DEFAULTS, notes)

    acts = {}
    for where, cfg in (("text_config", text), ("vision_config", vision)):
        act = cfg["hidden_act"]
        if act not in _ACTIVATIONS:
            raise CheckpointError(
                f"config.json {where}: hidden_act {act!r} is not supported; cliplab implements "
                f"{' and '.join(repr(a) for a in _ACTIVATIONS)} only"
            )
        acts[where] = act
        eps = cfg["layer_norm_eps"]
        if not isinstance(eps, (int, float)) or not math.isclose(float(eps), LAYER_NORM_EPS, rel_tol=1e-6):
            raise CheckpointError(
                f"config.json {where}: layer_norm_eps {eps!r} is not supported; cliplab's LayerNorm uses {LAYER_NORM_EPS}"
            )
    if acts["text_config"] != acts["vision_config"]:
        raise CheckpointError(
            f"config.json: text_config uses hidden_act {acts['text_config']!r} but vision_config uses "
            f"{acts['vision_config']!r}; cliplab uses one activation for both towers"
        )
    if vision["num_channels"] != 3:
        raise CheckpointError(
            f"config.json vision_config: num_channels is {vision['num_channels']}; cliplab needs 3 (RGB)"
        )

    projection_dim = raw.get("projection_dim")
    if projection_dim is None:
        projection_dim = _PROJECTION_DIM_DEFAULT
        notes.append(f"config.json omits projection_dim; used transformers' default {projection_dim}")

    v_where, t_where = "config.json vision_config", "config.json text_config"
    v_width = _int_field(vision, "hidden_size", v_where)
    t_width = _int_field(text, "hidden_size", t_where)
    try:
        config = CLIPConfig(
            embed_dim=_int_field({"projection_dim": projection_dim}, "projection_dim", "config.json"),
            vision=VisionConfig(
                image_size=_square(vision["image_size"], "image_size", v_where),
                layers=_int_field(vision, "num_hidden_layers", v_where),
                width=v_width,
                patch_size=_square(vision["patch_size"], "patch_size", v_where),
                heads=_int_field(vision, "num_attention_heads", v_where),
                mlp_ratio=_mlp_ratio(v_width, _int_field(vision, "intermediate_size", v_where), v_where),
            ),
            text=TextConfig(
                context_length=_int_field(text, "max_position_embeddings", t_where),
                vocab_size=_int_field(text, "vocab_size", t_where),
                width=t_width,
                heads=_int_field(text, "num_attention_heads", t_where),
                layers=_int_field(text, "num_hidden_layers", t_where),
                mlp_ratio=_mlp_ratio(t_width, _int_field(text, "intermediate_size", t_where), t_where),
            ),
            quick_gelu=_ACTIVATIONS[acts["text_config"]],
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json describes an architecture cliplab cannot build: {exc}") from exc

    # transformers pools text features at the first eos_token_id (or, for the legacy value 2, at the
    # highest id); cliplab always pools at the highest id. They agree when eos is the top id.
    eos = text.get("eos_token_id")
    if isinstance(eos, int) and eos not in (2, config.own_text.vocab_size - 1):
        notes.append(
            f"config.json text_config has eos_token_id {eos}: transformers pools text features at the first "
            f"token with that id, cliplab at the highest id in the sequence ({config.own_text.vocab_size - 1} for a "
            "full vocabulary); they differ on inputs where these positions differ"
        )
    return config


def _config_to_hf(config: CLIPConfig, dtype: torch.dtype) -> dict[str, Any]:
    """A complete transformers ``CLIPConfig`` dict for a ViT ``config``."""
    vision, text = config.own_vision, config.own_text
    act = "quick_gelu" if config.quick_gelu else "gelu"
    if text.vocab_size == OPENAI_VOCAB_SIZE:
        bos, eos = OPENAI_SOT_ID, OPENAI_EOT_ID
    else:
        # cliplab pools at the highest id: make transformers pool at the same token.
        bos, eos = text.vocab_size - 2, text.vocab_size - 1
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": str(dtype).removeprefix("torch."),
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT_VALUE,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": text.vocab_size,
            "hidden_size": text.width,
            "intermediate_size": int(text.width * text.mlp_ratio),
            "projection_dim": config.embed_dim,
            "num_hidden_layers": text.layers,
            "num_attention_heads": text.heads,
            "max_position_embeddings": text.context_length,
            "hidden_act": act,
            "layer_norm_eps": LAYER_NORM_EPS,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            # transformers pools at the first eos_token_id; with 49407 that is the first EOT, as in
            # cliplab's argmax. pad_token_id 1 is transformers' (and openai/clip-vit-*'s) value; the
            # model does not use it and the tokenizer pads with <|endoftext|>.
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": vision.width,
            "intermediate_size": int(vision.width * vision.mlp_ratio),
            "projection_dim": config.embed_dim,
            "num_hidden_layers": vision.layers,
            "num_attention_heads": vision.heads,
            "num_channels": 3,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "hidden_act": act,
            "layer_norm_eps": LAYER_NORM_EPS,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
        },
    }


# --------------------------------------------------------------------------- preprocessing


def _size_value(value: Any, where: str) -> tuple[int | None, str | None]:
    """``(side, kind)`` of a CLIPImageProcessor ``size`` / ``crop_size`` entry: kind is
    ``"shortest"`` (shortest_edge), ``"square"`` (height == width) or None when unreadable."""
    if isinstance(value, bool):
        return None, None
    if isinstance(value, int):
        return value, "shortest"
    if isinstance(value, dict):
        if isinstance(value.get("shortest_edge"), int):
            return value["shortest_edge"], "shortest"
        h, w = value.get("height"), value.get("width")
        if isinstance(h, int) and h == w:
            return h, "square"
        if isinstance(h, int) and isinstance(w, int):
            raise CheckpointError(f"{where}: non-square size {h}x{w}; cliplab produces square images only")
    return None, None


def _preprocess_from_hf(folder: Path, config: CLIPConfig, notes: list[str]) -> dict[str, Any]:
    n_model = config.vision.image_size
    path = folder / PREPROCESSOR_NAME
    if not path.is_file():
        notes.append(
            f"no {PREPROCESSOR_NAME}: preprocessing assumed to be OpenAI's (bicubic resize of the shortest side "
            f"to {n_model}, centre crop, OpenAI mean/std)"
        )
        return PreprocessConfig(image_size=n_model, mean=OPENAI_MEAN, std=OPENAI_STD).to_dict()

    where = PREPROCESSOR_NAME
    raw = _read_json(path, where)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} must hold a JSON object")
    do_center_crop = raw.get("do_center_crop", True)
    size, size_kind = _size_value(raw.get("size"), where)
    crop, _ = _size_value(raw.get("crop_size"), where)

    if do_center_crop:
        resize_mode = "shortest"
        image_size = crop if crop is not None else size
    else:
        resize_mode = "squash"
        image_size = size
        if size_kind == "shortest":
            notes.append(
                f"{where} resizes the shortest edge to {size} without a centre crop; cliplab squashes the image "
                "to a square instead"
            )
    if image_size is None:
        image_size = n_model
        notes.append(f"{where} gives no readable crop_size/size; used the model's image size {n_model}")
    if do_center_crop and size is not None and crop is not None and size != crop:
        notes.append(
            f"{where} resizes to {size} then crops {crop}; cliplab resizes the shortest side to {crop} and crops {crop}"
        )
    if image_size != n_model:
        notes.append(f"{where} produces {image_size}px images but the model's image_size is {n_model}")

    resample = raw.get("resample", 3)
    interpolation = _RESAMPLE_TO_NAME.get(resample) if isinstance(resample, int) else None
    if interpolation is None:
        interpolation = "bicubic"
        notes.append(f"{where}: unknown resample {resample!r}; used bicubic")

    mean, std = raw.get("image_mean"), raw.get("image_std")
    if mean is None or std is None:
        notes.append(f"{where} gives no image_mean/image_std; used OpenAI's")
    mean = OPENAI_MEAN if mean is None else mean
    std = OPENAI_STD if std is None else std
    if raw.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        notes.append(f"{where} disables normalisation: mean 0, std 1")
    if raw.get("do_resize", True) is False:
        notes.append(f"{where} disables resizing; cliplab always resizes to {image_size}")
    if raw.get("do_rescale", True) is False or raw.get("rescale_factor", 1 / 255) != 1 / 255:
        notes.append(f"{where} does not rescale by 1/255; cliplab always does")

    try:
        return PreprocessConfig(
            image_size=image_size, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode
        ).to_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def _preprocess_to_hf(preprocess: Mapping[str, Any] | None, image_size: int) -> dict[str, Any]:
    try:
        pre = PreprocessConfig(image_size=image_size) if preprocess is None else PreprocessConfig.from_dict(preprocess)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid preprocess settings: {exc}") from exc
    n = pre.image_size
    if n != image_size:
        raise CheckpointError(
            f"preprocess image_size {n} differs from the model's image_size {image_size}; transformers' CLIP "
            "accepts only images of its configured size"
        )
    squash = pre.resize_mode == "squash"
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"height": n, "width": n} if squash else {"shortest_edge": n},
        "resample": _NAME_TO_RESAMPLE[pre.interpolation],
        "do_center_crop": not squash,
        "crop_size": {"height": n, "width": n},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_convert_rgb": True,
    }


# --------------------------------------------------------------------------- tokenizer files


def _write_tokenizer(folder: Path, context_length: int) -> None:
    tokenizer = default_tokenizer()
    _write_json(folder / "vocab.json", tokenizer.vocabulary, ensure_ascii=False, indent=None)
    merges = "\n".join(f"{a} {b}" for a, b in tokenizer.merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")

    def special(token: str) -> dict[str, Any]:
        return {
            "content": token,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": context_length,
            "bos_token": SOT_TOKEN,
            "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN,
            "pad_token": EOT_TOKEN,
            "do_lower_case": True,
            "errors": "replace",
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {str(OPENAI_SOT_ID): special(SOT_TOKEN), str(OPENAI_EOT_ID): special(EOT_TOKEN)},
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": EOT_TOKEN},
    )


# --------------------------------------------------------------------------- files


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {what} ({path}): {exc}") from exc


def _write_json(path: Path, data: Any, ensure_ascii: bool = True, indent: int | None = 2) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=ensure_ascii, indent=indent)
        f.write("\n")


def _weights_file(folder: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    path = _weights_file(folder)
    if path is None:
        raise CheckpointError(f"{folder} has no weights file: expected one of {', '.join(WEIGHT_NAMES)}")
    if not path.name.endswith(".index.json"):
        return load_tensors(path), path.name

    index = _read_json(path, path.name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no weight_map")
    root = folder.resolve()
    tensors: dict[str, torch.Tensor] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = (folder / str(shard_name)).resolve()
        if root not in shard.parents:
            raise CheckpointError(f"{path.name} names a shard outside the folder: {shard_name!r}")
        if not shard.is_file():
            raise CheckpointError(f"{path.name} names the shard {shard_name!r}, which is missing from {folder}")
        for key, tensor in load_tensors(shard).items():
            if key in tensors:
                raise CheckpointError(f"tensor {key!r} appears in more than one shard")
            tensors[key] = tensor
    return tensors, path.name


def _read_config_json(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when absent or unreadable."""
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _is_clip_config(raw: Mapping[str, Any]) -> bool:
    model_type = raw.get("model_type")
    if model_type is not None:
        return model_type == "clip"
    return "text_config" in raw and "vision_config" in raw


# --------------------------------------------------------------------------- public API


def is_huggingface_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a transformers CLIP folder.

    True for a directory whose ``config.json`` declares ``model_type`` ``"clip"`` (or, without a
    ``model_type``, has both ``text_config`` and ``vision_config``) and which holds
    ``model.safetensors``, ``pytorch_model.bin`` or a sharded ``*.index.json`` of either. Never raises.
    """
    try:
        folder = Path(path)
        if not folder.is_dir():
            return False
        raw = _read_config_json(folder)
        return raw is not None and _is_clip_config(raw) and _weights_file(folder) is not None
    except (OSError, TypeError, ValueError):
        return False


def read_huggingface(folder: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read a transformers CLIP folder into cliplab's terms.

    The architecture comes from ``config.json``; the weights from ``model.safetensors`` (preferred),
    a sharded safetensors index, or ``pytorch_model.bin`` (loaded with ``weights_only=True``, so no
    pickled code runs). Tensors are renamed to OpenAI's keys, the q/k/v projections stacked into
    ``in_proj_weight``/``in_proj_bias``, the two projections transposed, ``position_ids`` buffers
    dropped and everything converted to float32. ``preprocess`` comes from
    ``preprocessor_config.json`` when present, else from the model's image size with OpenAI's
    mean/std (recorded in ``notes``).

    Raises:
        CheckpointError: the folder is not a transformers CLIP model, a file is missing or
            unreadable, the config uses something cliplab does not implement (an activation other
            than ``quick_gelu``/``gelu``, ``layer_norm_eps`` other than 1e-5, different activations
            per tower), keys are missing or unexpected, or a tensor's shape disagrees with the config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; not a Hugging Face model folder")
    raw = _read_json(config_path, CONFIG_NAME)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object")
    if not _is_clip_config(raw):
        kind = raw.get("model_type")
        raise CheckpointError(
            f"{config_path} describes model_type {kind!r}, not a Hugging Face CLIP model (model_type 'clip' "
            "with text_config and vision_config)"
        )

    notes: list[str] = []
    config = _config_from_hf(raw, notes)
    tensors, weights_name = _load_weights(folder)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("embeddings.position_ids")}

    openai_shapes = _openai_shapes(config)
    check_shapes(tensors, _hf_shapes(config, openai_shapes), f"{folder / weights_name}")

    dtypes = {t.dtype for t in tensors.values()}
    if dtypes != {torch.float32}:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        notes.append(f"weights stored as {names}; converted to float32")

    state_dict: dict[str, torch.Tensor] = {}
    for openai_key, hf_keys, kind in _key_pairs(config):
        if kind == _QKV:
            tensor = torch.cat([tensors[k] for k in hf_keys], dim=0)
        elif kind == _TRANSPOSE:
            tensor = tensors[hf_keys[0]].t()
        else:
            tensor = tensors[hf_keys[0]]
        state_dict[openai_key] = tensor.to(torch.float32).contiguous()
    check_shapes(state_dict, openai_shapes, "converted state dict")  # internal consistency

    preprocess = _preprocess_from_hf(folder, config, notes)
    return LoadedCheckpoint(
        state_dict=state_dict, config=config, source_format="huggingface", preprocess=preprocess, notes=notes
    )


def write_huggingface(
    state_dict: Mapping[str, torch.Tensor],
    config: CLIPConfig,
    folder: str | os.PathLike[str],
    preprocess: dict | None = None,
) -> None:
    """Write a cliplab/OpenAI state dict as a transformers CLIP folder.

    Creates ``folder`` if needed and writes ``config.json`` (a complete transformers
    ``CLIPConfig``), ``model.safetensors`` (tensors in the state dict's dtype), and
    ``preprocessor_config.json`` (a ``CLIPImageProcessor``, from ``preprocess`` — a
    ``cliplab.preprocess.PreprocessConfig`` dict — or OpenAI's defaults at the model's image size).
    For the standard 49,408-token vocabulary it also writes the tokenizer files (``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``) built from cliplab's
    shipped BPE file, so ``transformers.CLIPTokenizer.from_pretrained(folder)`` works offline;
    other vocabulary sizes get no tokenizer files. Existing files of those names are replaced.

    Raises:
        CheckpointError: ``config`` has a ResNet image tower (not representable in transformers),
            the state dict does not match ``config`` (missing/unexpected keys or a wrong shape), or
            ``preprocess`` is invalid or disagrees with the model's image size.
    """
    if config.own_vision.is_resnet:
        raise CheckpointError(
            "Hugging Face CLIP supports Vision Transformer image towers only; export RN models to OpenCLIP "
            "format instead"
        )
    tensors = {k: v for k, v in state_dict.items()}
    check_shapes(tensors, _openai_shapes(config), "state dict")
    preprocessor = _preprocess_to_hf(preprocess, config.vision.image_size)

    hf: dict[str, torch.Tensor] = {}
    for openai_key, hf_keys, kind in _key_pairs(config):
        tensor = tensors[openai_key].detach().to("cpu")
        if kind == _QKV:
            for hf_key, part in zip(hf_keys, tensor.chunk(3, dim=0)):
                hf[hf_key] = part.clone().contiguous()
        elif kind == _TRANSPOSE:
            hf[hf_keys[0]] = tensor.t().contiguous().clone()
        else:
            hf[hf_keys[0]] = tensor.contiguous().clone()

    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    dtype = tensors["visual.conv1.weight"].dtype
    _write_json(out / CONFIG_NAME, _config_to_hf(config, dtype))
    save_file(hf, str(out / SAFETENSORS_NAME), metadata={"format": "pt"})
    _write_json(out / PREPROCESSOR_NAME, preprocessor)
    if config.own_text.vocab_size == OPENAI_VOCAB_SIZE:
        _write_tokenizer(out, config.text.context_length)
