"""cliplab: CLIP from training to serving.

>>> import cliplab
>>> clip = cliplab.load("path/or/name")           # a Pipeline
>>> clip.embed_texts(["a photo of a cat"])          # L2-normalised float32 array

The names below are imported on first use (PEP 562), so that ``import cliplab.cli`` and
``cliplab --help`` do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {
    "CLIP": "cliplab.model",
    "CLIPConfig": "cliplab.model",
    "get_preset": "cliplab.model",
    "preset_names": "cliplab.model",
    "CheckpointError": "cliplab.checkpoints",
    "DEFAULT_MODEL": "cliplab.paths",
    "Pipeline": "cliplab.api",
    "default_device": "cliplab.api",
    "load": "cliplab.api",
    "build": "cliplab.api",
    "HeadConfig": "cliplab.model.towers",
    "HFTextConfig": "cliplab.model.towers",
    "TimmVisionConfig": "cliplab.model.towers",
    "ImageLoadError": "cliplab.images",
    "load_image": "cliplab.images",
    "cliplab_home": "cliplab.paths",
    "PreprocessConfig": "cliplab.preprocess",
    "Preprocessor": "cliplab.preprocess",
    "Tokenizer": "cliplab.tokenizer",
    "tokenize": "cliplab.tokenizer",
    "ZeroShotClassifier": "cliplab.zeroshot",
}

__all__ = [
    "CLIP",
    "DEFAULT_MODEL",
    "CLIPConfig",
    "CheckpointError",
    "HFTextConfig",
    "HeadConfig",
    "ImageLoadError",
    "Pipeline",
    "PreprocessConfig",
    "Preprocessor",
    "TimmVisionConfig",
    "Tokenizer",
    "ZeroShotClassifier",
    "__version__",
    "build",
    "cliplab_home",
    "default_device",
    "get_preset",
    "load",
    "load_image",
    "preset_names",
    "tokenize",
]

if TYPE_CHECKING:
    from .api import Pipeline, build, default_device, load
    from .checkpoints import CheckpointError
    from .images import ImageLoadError, load_image
    from .model import CLIP, CLIPConfig, get_preset, preset_names
    from .model.towers import HeadConfig, HFTextConfig, TimmVisionConfig
    from .paths import DEFAULT_MODEL, cliplab_home
    from .preprocess import PreprocessConfig, Preprocessor
    from .tokenizer import Tokenizer, tokenize
    from .zeroshot import ZeroShotClassifier

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
