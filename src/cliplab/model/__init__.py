"""CLIP model definition: configs, layers, towers and the two-tower model.

The configs import no torch (so that :mod:`cliplab.model.towers.hf_tokenizer` and the configs serve
torch-free paths); :class:`CLIP` and the presets' helpers are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .configs import CLIPConfig, TextConfig, VisionConfig, get_preset, preset_names

if TYPE_CHECKING:
    from .clip import CLIP

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "get_preset", "preset_names"]


def __getattr__(name: str) -> Any:
    if name == "CLIP":
        value = importlib.import_module(".clip", __name__).CLIP
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
