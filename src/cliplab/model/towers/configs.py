"""Configs of towers from other libraries: an image tower from timm, a text tower from Hugging Face
transformers, and the projection head that maps each into the shared embedding space.

These are plain dataclasses (no torch, timm or transformers import), stored in a model's
``cliplab_config.json`` beside cliplab's own :class:`~cliplab.model.configs.VisionConfig` /
:class:`~cliplab.model.configs.TextConfig`, from which they are told apart by their ``type`` key.

Weight sources (``pretrained``) are strings:

* ``""``: none (the library's random initialisation; a checkpoint's state dict fills the weights);
* a path to a file (timm: ``.safetensors``, ``.pth``, ``.bin``) or a folder (Hugging Face: ``config.json``,
  weights and tokenizer files);
* ``package:MODULE/PATH``: a file or folder inside an installed Python package;
* ``timm``: timm's default pretrained weights for the architecture (from the Hugging Face hub);
* ``hf-hub:ORG/NAME``: a Hugging Face hub repository (cached by ``huggingface_hub``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEAD_TYPES", "HF_POOLINGS", "HFTextConfig", "HeadConfig", "TimmVisionConfig"]

HEAD_TYPES = ("linear", "mlp", "none")
#: mean: the masked mean of the last hidden states; cls: the first token's hidden state; pooler: the
#: tower's own pooler output (BERT: CLS -> dense -> tanh); end: the hidden state at each text's last
#: token (the end token: [SEP], </s>, or the last word of a decoder).
HF_POOLINGS = ("mean", "cls", "pooler", "end")
_RESIZE_MODES = ("shortest", "squash")


@dataclass
class HeadConfig:
    """A projection head from a tower's features into the shared embedding space.

    ``linear``: dropout, then one linear layer. ``mlp``: linear, GELU, dropout, linear.
    ``none``: the features themselves (their width must equal ``embed_dim``).
    ``hidden_dim`` 0 and ``hidden_bias`` None take OpenCLIP's choice for the tower (image: 2 x embed_dim,
    with bias; text: (width + embed_dim) // 2, without), so that the default heads export to its format.
    """

    type: str = "linear"
    hidden_dim: int = 0
    dropout: float = 0.0
    bias: bool = False  # the output layer's bias
    hidden_bias: bool | None = None  # the MLP's first layer's bias

    def __post_init__(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ValueError(f"unknown projection head type {self.type!r}; expected one of {HEAD_TYPES}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_dim < 0:
            raise ValueError(f"head hidden_dim must be positive (or 0 for the default), got {self.hidden_dim}")


def _head_identity(head: HeadConfig) -> dict[str, Any]:
    """The head's settings that decide its function at inference (dropout does not)."""
    return {k: v for k, v in dataclasses.asdict(head).items() if k != "dropout"}


def _head(value: Any) -> HeadConfig:
    if isinstance(value, HeadConfig):
        return value
    if isinstance(value, str):
        return HeadConfig(type=value)
    if isinstance(value, dict):
        _check_keys(value, HeadConfig, "projection head")
        return HeadConfig(**value)
    raise ValueError(f"a projection head is a type name or a table, got {value!r}")


def _check_keys(data: dict[str, Any], cls: type, what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; expected some of {sorted(known)}")


@dataclass
class TimmVisionConfig:
    """An image tower from timm: ``timm.create_model(model_name, **model_kwargs)`` with its classifier
    removed and its global pooling set to ``pool`` (timm's names: ``avg``, ``max``, ``avgmax``,
    ``token`` for ViTs, ...; ``""`` keeps the architecture's own), then :attr:`head`.

    ``mean``, ``std``, ``interpolation`` and ``resize_mode`` are the tower's own preprocessing (filled
    from timm's pretrained config of the architecture when left empty); ``pretrained`` says where its
    weights come from when a model is built from this config (see the module docstring), and
    ``weights_layout`` how the file names them: ``timm`` (timm's names, optionally under a prefix such
    as ``module.``) or ``ordered`` (the tower's tensors in timm's order under other names, e.g. the
    efficientnet-pytorch files for timm's ``tf_efficientnet_*``; every shape is checked).
    """

    model_name: str
    type: str = "timm"
    image_size: int = 224
    pool: str = "avg"
    pretrained: str = ""
    weights_layout: str = "timm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = ""
    resize_mode: str = "shortest"
    licence: str = ""
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.type != "timm":
            raise ValueError(f"a timm image tower has type 'timm', got {self.type!r}")
        if not self.model_name:
            raise ValueError("a timm image tower needs model_name (a timm architecture, e.g. 'tf_efficientnet_lite0')")
        self.head = _head(self.head)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise ValueError(f"image tower {name} needs 3 values (R, G, B), got {list(value)}")
                setattr(self, name, value)
        if self.weights_layout not in ("timm", "ordered"):
            raise ValueError(f"unknown weights_layout {self.weights_layout!r}; expected 'timm' or 'ordered'")
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; expected one of {_RESIZE_MODES}")

    def preprocess(self) -> dict[str, Any]:
        """The tower's preprocessing as a :class:`cliplab.preprocess.PreprocessConfig` dict."""
        out: dict[str, Any] = {"image_size": self.image_size, "resize_mode": self.resize_mode}
        if self.mean is not None:
            out["mean"] = list(self.mean)
        if self.std is not None:
            out["std"] = list(self.std)
        if self.interpolation:
            out["interpolation"] = self.interpolation
        return out

    def identity(self) -> dict[str, Any]:
        """What decides the tower's function (for the model fingerprint): no provenance."""
        return {
            "type": self.type,
            "model_name": self.model_name,
            "image_size": self.image_size,
            "pool": self.pool,
            "model_kwargs": self.model_kwargs,
            "head": _head_identity(self.head),
        }


@dataclass
class HFTextConfig:
    """A text tower from Hugging Face transformers: the ``AutoModel`` of :attr:`hf_config` (the tower's
    ``config.json``), pooled as :attr:`pooling` says (see :data:`HF_POOLINGS`), then :attr:`head`.

    ``model_name`` is where the architecture, the tokenizer and (with ``pretrained``) the weights come
    from when a model is built from this config: a folder, ``package:MODULE/PATH`` or ``hf-hub:ORG/NAME``
    (a bare ``ORG/NAME`` that is no local path means the hub too). ``hf_config`` is filled from there
    and saved with the model, so a saved model rebuilds without it. ``context_length`` 0 takes the
    tower's (its tokenizer's ``model_max_length`` or its position embeddings, whichever is smaller).
    """

    model_name: str
    type: str = "hf"
    pretrained: bool = True
    pooling: str = "mean"
    context_length: int = 0
    hf_config: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if self.type != "hf":
            raise ValueError(f"a Hugging Face text tower has type 'hf', got {self.type!r}")
        if not self.model_name and not self.hf_config:
            raise ValueError("a Hugging Face text tower needs model_name (a folder, package:... or hf-hub:ORG/NAME)")
        if self.pooling not in HF_POOLINGS:
            raise ValueError(f"unknown text pooling {self.pooling!r}; expected one of {HF_POOLINGS}")
        if self.context_length < 0 or self.context_length == 1:
            raise ValueError(f"context_length must be at least 2 (or 0 for the tower's), got {self.context_length}")
        self.head = _head(self.head)

    @property
    def model_type(self) -> str:
        return str(self.hf_config.get("model_type", ""))

    @property
    def width(self) -> int:
        """The tower's hidden size."""
        for key in ("hidden_size", "d_model", "n_embd", "dim"):
            if key in self.hf_config:
                return int(self.hf_config[key])
        raise ValueError(f"the {self.model_type or 'text'} tower's config names no hidden size")

    def identity(self) -> dict[str, Any]:
        """What decides the tower's function (for the model fingerprint): no provenance."""
        architecture = {
            k: v for k, v in self.hf_config.items() if not k.startswith("_") and k != "transformers_version"
        }
        return {
            "type": self.type,
            "pooling": self.pooling,
            "context_length": self.context_length,
            "hf_config": architecture,
            "head": _head_identity(self.head),
        }


def vision_tower_from_dict(data: dict[str, Any]) -> TimmVisionConfig:
    """An image tower config from its dict (``type = "timm"``)."""
    if data.get("type") != "timm":
        raise ValueError(f"unknown vision tower type {data.get('type')!r}; expected 'timm' or cliplab's own (no type)")
    _check_keys(data, TimmVisionConfig, "timm vision tower")
    return TimmVisionConfig(**data)


def text_tower_from_dict(data: dict[str, Any]) -> HFTextConfig:
    """A text tower config from its dict (``type = "hf"``; ``huggingface`` and ``transformers`` too)."""
    if data.get("type") not in ("hf", "huggingface", "transformers"):
        raise ValueError(f"unknown text tower type {data.get('type')!r}; expected 'hf' or cliplab's own (no type)")
    data = {**data, "type": "hf"}
    _check_keys(data, HFTextConfig, "Hugging Face text tower")
    return HFTextConfig(**data)
