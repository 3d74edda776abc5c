"""CLIP model definition: configs, layers, towers and the two-tower model."""

from .clip import CLIP
from .configs import CLIPConfig, TextConfig, VisionConfig, get_preset, preset_names

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "get_preset", "preset_names"]
