"""A fingerprint of one tower, for caches of its features (a locked tower computes the same features
for the same input as long as this fingerprint is the same).

It covers the tower's architecture (its config's identity), its weights and what turns inputs into
its input: the preprocessing for the image tower, the tokenizer for the text tower. For towers from
other libraries the weights are the trunk's (``visual.trunk.*``, ``text.transformer.*``): their
projection heads are left out unless ``heads`` is true, since features before the head do not depend
on it. For cliplab's own towers, whose projection is part of the tower, all their weights count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .configs import HFTextConfig, TimmVisionConfig

__all__ = ["tower_fingerprint"]


def _in_tower(key: str, tower: str) -> bool:
    if tower == "vision":
        return key.startswith("visual.")
    return not key.startswith("visual.") and key != "logit_scale"


def tower_fingerprint(model: Any, tower: str, preprocess: dict | None = None, heads: bool = False) -> str:
    """The hex fingerprint of ``model``'s ``tower`` (``vision`` or ``text``); ``preprocess`` is the image
    preprocessing (a :class:`~cliplab.preprocess.PreprocessConfig` dict; default: the model config's)."""
    if tower not in ("vision", "text"):
        raise ValueError(f"tower must be 'vision' or 'text', got {tower!r}")
    config = getattr(model.config, tower)
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(config, (TimmVisionConfig, HFTextConfig)):
        identity = config.identity()
        if not heads:
            identity.pop("head")
    else:
        identity = {"own": dataclasses.asdict(config), "quick_gelu": model.config.quick_gelu}
    digest.update(json.dumps(identity, sort_keys=True, default=list).encode())
    if tower == "vision":
        from ...preprocess import PreprocessConfig

        settings = PreprocessConfig.from_dict(preprocess or model.config.preprocess()).to_dict()
        digest.update(json.dumps(settings, sort_keys=True).encode())
    else:
        tokenizer = getattr(model, "tokenizer", None)
        fingerprint = getattr(tokenizer, "fingerprint", None) or {"kind": "clip-bpe"}
        digest.update(json.dumps(fingerprint, sort_keys=True).encode())
    skip = ("visual.head.", "text.head.") if not heads else ()
    for name, tensor in sorted(model.state_dict().items()):
        if _in_tower(name, tower) and not name.startswith(skip):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().contiguous().numpy())
    return digest.hexdigest()
