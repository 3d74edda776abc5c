"""Which model made a set of vectors: its name and a fingerprint of everything that decides its
embeddings (weights, preprocessing, tokenizer). Search stores and saved zero-shot classifiers record
it, and using either with another model is an error that names both."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelIdentity", "ModelMismatchError", "model_identity"]


class ModelMismatchError(ValueError):
    """Vectors made by one model were about to be compared with another model's."""


@dataclass(frozen=True)
class ModelIdentity:
    """A model as stores and classifiers record it."""

    name: str
    fingerprint: str
    embed_dim: int

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "fingerprint": self.fingerprint, "embed_dim": self.embed_dim})

    @classmethod
    def from_json(cls, text: str) -> ModelIdentity:
        data = json.loads(text)
        return cls(data["name"], data["fingerprint"], int(data["embed_dim"]))


def model_identity(pipeline: Any) -> ModelIdentity:
    """The pipeline's name and a fingerprint of its weights and preprocessing (computed once per pipeline).

    The tokenizer enters the fingerprint only when it is not OpenAI's BPE, and the architecture only for
    towers from other libraries (their configs, pooling and heads: :meth:`cliplab.model.CLIPConfig.identity`),
    so that stores made before either was recorded keep their fingerprint."""
    cached = getattr(pipeline, "_identity", None)
    if cached is not None:
        return cached
    state = pipeline.checkpoint.state_dict if pipeline.checkpoint is not None else pipeline.model.state_dict()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(pipeline.preprocess.config.to_dict(), sort_keys=True).encode())
    tokenizer = getattr(pipeline.tokenizer, "fingerprint", None)
    if tokenizer:
        digest.update(json.dumps(tokenizer, sort_keys=True).encode())
    towers = pipeline.model.config.identity()  # towers from other libraries; None for cliplab's own
    if towers is not None:
        digest.update(json.dumps(towers, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().float().contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy())  # the buffer itself: no copy
    identity = ModelIdentity(pipeline.name or "unnamed", digest.hexdigest(), pipeline.embed_dim)
    pipeline._identity = identity
    return identity
