"""Towers from other libraries: image towers from timm, text towers from Hugging Face transformers, and
their projection heads (see docs/towers.md).

Importing this package imports neither torch, timm nor transformers: the configs are plain dataclasses,
and the modules that build towers import their library when a tower is built.
"""

from .configs import HEAD_TYPES, HF_POOLINGS, HeadConfig, HFTextConfig, TimmVisionConfig

__all__ = ["HEAD_TYPES", "HF_POOLINGS", "HFTextConfig", "HeadConfig", "TimmVisionConfig"]
