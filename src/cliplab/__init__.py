"""cliplab: CLIP from training to serving.

>>> import cliplab
>>> clip = cliplab.load("path/or/name")           # a Pipeline
>>> clip.embed_texts(["a photo of a cat"])          # L2-normalised float32 array
"""

from .api import DEFAULT_MODEL, Pipeline, cliplab_home, default_device, load
from .checkpoints import CheckpointError
from .model import CLIP, CLIPConfig, get_preset, preset_names
from .preprocess import ImageLoadError, Preprocessor, PreprocessConfig, load_image
from .tokenizer import Tokenizer, tokenize
from .zeroshot import ZeroShotClassifier

__version__ = "0.1.0"

__all__ = ["CLIP", "CLIPConfig", "CheckpointError", "DEFAULT_MODEL", "ImageLoadError", "Pipeline", "PreprocessConfig",
           "Preprocessor", "Tokenizer", "ZeroShotClassifier", "cliplab_home", "default_device", "get_preset", "load",
           "load_image", "preset_names", "tokenize"]
