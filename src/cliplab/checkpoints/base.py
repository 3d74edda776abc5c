"""What every checkpoint reader returns, and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.configs import CLIPConfig


class CheckpointError(ValueError):
    """A file or folder is not a CLIP checkpoint cliplab can read; the message says what is wrong."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint read into cliplab's terms.

    ``state_dict`` uses OpenAI's parameter names (those of :class:`cliplab.model.CLIP`) in float32;
    ``config`` is the architecture, inferred from tensor shapes and any config file;
    ``preprocess`` holds the image settings (``cliplab.preprocess.PreprocessConfig`` as a dict);
    ``notes`` records every decision that was not read directly from the file;
    ``tokenizer`` is the text tower's own tokenizer (a Hugging Face text tower's
    :class:`~cliplab.model.towers.hf_tokenizer.HFTokenizer`), ``None`` for OpenAI's BPE.
    """

    state_dict: dict[str, torch.Tensor]
    config: CLIPConfig
    source_format: str
    preprocess: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # free-form provenance (training recipe, data, ...)
    tokenizer: Any = None
