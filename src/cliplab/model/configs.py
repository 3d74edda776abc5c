"""Architecture configs for CLIP models and named presets.

A :class:`CLIPConfig` fully describes the network: building a model from it and loading a
state dict of the same architecture round-trips exactly. The presets cover every architecture
OpenAI published plus a few small ones that train on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .towers.configs import HFTextConfig, TimmVisionConfig, text_tower_from_dict, vision_tower_from_dict

ResNetLayers = tuple[int, int, int, int]


@dataclass
class VisionConfig:
    """Image tower. ``layers`` is an int for a Vision Transformer (its depth) and a 4-tuple of
    bottleneck counts for the modified ResNet."""

    image_size: int = 224
    layers: int | ResNetLayers = 12
    width: int = 768
    patch_size: int | None = 32  # ViT only
    heads: int | None = None  # default: width // 64 (ViT) or width * 32 // 64 (ResNet)
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if self.is_resnet:
            self.patch_size = None
            if len(self.layers) != 4:  # type: ignore[arg-type]
                raise ValueError(f"a ResNet image tower needs 4 stage depths, got layers={self.layers}")
        elif not self.patch_size:
            raise ValueError("a Vision Transformer image tower needs patch_size")
        if self.heads is None:
            self.heads = self.width * 32 // 64 if self.is_resnet else self.width // 64

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def grid_size(self) -> int:
        """Side of the token grid: patches per side (ViT) or the final feature map (ResNet, stride 32)."""
        return self.image_size // 32 if self.is_resnet else self.image_size // self.patch_size  # type: ignore[operator]


@dataclass
class TextConfig:
    """Causal text transformer."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    """Both towers, the shared embedding size and the activation.

    Each tower is cliplab's own (:class:`VisionConfig`, :class:`TextConfig`) or one from another library
    (:class:`~cliplab.model.towers.TimmVisionConfig`, :class:`~cliplab.model.towers.HFTextConfig`), in
    any combination. ``quick_gelu`` concerns cliplab's own towers only."""

    embed_dim: int = 512
    vision: VisionConfig | TimmVisionConfig = field(default_factory=VisionConfig)
    text: TextConfig | HFTextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # OpenAI weights use QuickGELU; most OpenCLIP-trained weights use GELU

    @property
    def is_composed(self) -> bool:
        """Whether a tower comes from another library (timm, transformers)."""
        return isinstance(self.vision, TimmVisionConfig) or isinstance(self.text, HFTextConfig)

    @property
    def own_vision(self) -> VisionConfig:
        """The image tower's config when it is cliplab's own (a ``ValueError`` otherwise)."""
        if not isinstance(self.vision, VisionConfig):
            raise ValueError(f"the image tower is a {self.vision.type} tower, not cliplab's own ViT or ResNet")
        return self.vision

    @property
    def own_text(self) -> TextConfig:
        """The text tower's config when it is cliplab's own (a ``ValueError`` otherwise)."""
        if not isinstance(self.text, TextConfig):
            raise ValueError(f"the text tower is a {self.text.type} tower, not cliplab's own text transformer")
        return self.text

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def preprocess(self) -> dict[str, Any]:
        """The image tower's preprocessing (a :class:`cliplab.preprocess.PreprocessConfig` dict; keys
        left out take its defaults, OpenAI's)."""
        if isinstance(self.vision, TimmVisionConfig):
            return self.vision.preprocess()
        return {"image_size": self.vision.image_size}

    def identity(self) -> dict[str, Any] | None:
        """What the model fingerprint records beside the weights, preprocessing and tokenizer: the
        towers from other libraries (their architecture, pooling and heads); ``None`` for cliplab's own
        towers, whose fingerprints predate it and stay unchanged."""
        if not self.is_composed:
            return None
        return {
            "embed_dim": self.embed_dim,
            "vision": self.vision.identity() if isinstance(self.vision, TimmVisionConfig) else self.to_dict()["vision"],
            "text": self.text.identity() if isinstance(self.text, HFTextConfig) else self.to_dict()["text"],
            "quick_gelu": self.quick_gelu,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["vision"].get("layers"), tuple):
            d["vision"]["layers"] = list(d["vision"]["layers"])
        for key in ("mean", "std"):
            if isinstance(d["vision"].get(key), tuple):
                d["vision"][key] = list(d["vision"][key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CLIP config keys: {sorted(unknown)}")
        vision, text = dict(d.get("vision", {})), dict(d.get("text", {}))
        return cls(
            embed_dim=d["embed_dim"],
            vision=vision_tower_from_dict(vision) if "type" in vision else VisionConfig(**vision),
            text=text_tower_from_dict(text) if "type" in text else TextConfig(**text),
            quick_gelu=d.get("quick_gelu", True),
        )


def _openai_resnet(embed_dim: int, image_size: int, layers: ResNetLayers, width: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width),
        text=TextConfig(width=text_width, heads=text_width // 64, layers=12),
    )


def _openai_vit(embed_dim: int, image_size: int, layers: int, width: int, patch: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width, patch_size=patch),
        text=TextConfig(width=text_width, heads=text_width // 64, layers=12),
    )


def _small_vit(embed_dim: int, image_size: int, patch: int, width: int, layers: int, heads: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width, patch_size=patch, heads=heads),
        text=TextConfig(width=width, heads=heads, layers=layers),
        quick_gelu=False,
    )


PRESETS: dict[str, CLIPConfig] = {
    # OpenAI's published architectures (Radford et al. 2021, table 19 and 20).
    "RN50": _openai_resnet(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _openai_resnet(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _openai_resnet(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _openai_resnet(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _openai_resnet(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B-32": _openai_vit(512, 224, 12, 768, 32, 512),
    "ViT-B-16": _openai_vit(512, 224, 12, 768, 16, 512),
    "ViT-L-14": _openai_vit(768, 224, 24, 1024, 14, 768),
    "ViT-L-14-336": _openai_vit(768, 336, 24, 1024, 14, 768),
    # Small models that train on a CPU.
    "ViT-nano": _small_vit(128, 64, 8, 128, 4, 2),
    "ViT-micro": _small_vit(256, 96, 16, 256, 6, 4),
    "RN-nano": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16),
        text=TextConfig(width=128, heads=2, layers=4),
        quick_gelu=False,
    ),
}

# OpenAI's own spellings ("ViT-B/32", "ViT-L/14@336px") resolve to the same presets.
_ALIASES = {
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "ViT-L/14@336": "ViT-L-14-336",
}


def preset_names() -> list[str]:
    return list(PRESETS)


def canonical_name(name: str) -> str:
    """OpenCLIP's spelling of an architecture name (``ViT-B/32`` -> ``ViT-B-32``)."""
    return _ALIASES.get(name, name)


def get_preset(name: str) -> CLIPConfig:
    """A fresh copy of the named architecture; raises ``KeyError`` listing the names on a miss."""
    key = canonical_name(name)
    if key not in PRESETS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(PRESETS)}")
    return CLIPConfig.from_dict(PRESETS[key].to_dict())
