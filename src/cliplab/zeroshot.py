"""Zero-shot classification: class names x prompt templates -> one embedding per class.

Each class embedding is the mean of its L2-normalised template embeddings, renormalised (OpenAI's
prompt ensembling). Class embeddings can be saved and reused without the text tower; a saved
classifier records the fingerprint of the model that made it (:mod:`cliplab.identity`), and applying
it to another model is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from .api import Pipeline
from .identity import ModelMismatchError
from .images import ImageInput
from .templates import get_templates


@dataclass
class Prediction:
    label: str
    probability: float
    score: float  # cosine similarity


class ZeroShotClassifier:
    def __init__(
        self,
        class_names: Sequence[str],
        weights: np.ndarray,
        logit_scale: float,
        model_name: str = "",
        model_fingerprint: str = "",
    ):
        if len(class_names) != len(weights):
            raise ValueError(f"{len(class_names)} class names but {len(weights)} class embeddings")
        self.class_names = list(class_names)
        self.weights = np.asarray(weights, dtype=np.float32)  # [classes, embed_dim], unit rows
        self.logit_scale = float(logit_scale)
        self.model_name = model_name
        self.model_fingerprint = model_fingerprint  # "" for classifiers built by hand, which are not checked

    @classmethod
    def from_labels(
        cls,
        pipeline: Pipeline,
        class_names: Sequence[str],
        templates: str | Sequence[str] = "imagenet80",
        progress: bool = False,
    ) -> ZeroShotClassifier:
        """Embed every class name in every template and average per class."""
        class_names = [c.strip() for c in class_names]
        if not class_names or any(not c for c in class_names):
            raise ValueError("zero-shot classification needs one or more non-empty class names")
        prompts = get_templates(templates if isinstance(templates, str) else list(templates))
        texts = [t.format(c) for c in class_names for t in prompts]
        embeddings = pipeline.embed_texts(texts, progress=progress).reshape(len(class_names), len(prompts), -1)
        means = embeddings.mean(axis=1)
        weights = means / np.linalg.norm(means, axis=-1, keepdims=True)
        identity = getattr(pipeline, "identity", None)  # hand-built encoders (tests, adapters) may have none
        if identity is None:
            return cls(class_names, weights, pipeline.logit_scale, getattr(pipeline, "name", ""))
        return cls(class_names, weights, pipeline.logit_scale, identity.name, identity.fingerprint)

    def check_model(self, pipeline: Pipeline) -> None:
        """Raise :class:`~cliplab.identity.ModelMismatchError` unless ``pipeline`` is the model these class
        embeddings were made with (classifiers saved without a fingerprint are checked by width only)."""
        if self.weights.shape[1] != pipeline.embed_dim:
            raise ModelMismatchError(
                f"these class embeddings have {self.weights.shape[1]} dimensions (model "
                f"{self.model_name or 'unknown'}) but the model embeds into {pipeline.embed_dim}: "
                "rebuild the classifier with this model"
            )
        identity = getattr(pipeline, "identity", None)
        if self.model_fingerprint and identity is not None and self.model_fingerprint != identity.fingerprint:
            raise ModelMismatchError(
                f"this classifier was made with model {self.model_name!r} (fingerprint {self.model_fingerprint[:12]}), "
                f"not {identity.name!r} ({identity.fingerprint[:12]}): pass --model {self.model_name} or rebuild "
                "the classifier with this model"
            )

    def logits(self, image_embeddings: np.ndarray) -> np.ndarray:
        return self.logit_scale * image_embeddings @ self.weights.T

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        logits = self.logits(image_embeddings)
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)

    def classify(self, pipeline: Pipeline, images: Iterable[ImageInput], top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions per image, best first."""
        self.check_model(pipeline)
        return self.predict(pipeline.embed_images(images), top_k)

    def predict(self, embeddings: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions per row of L2-normalised image embeddings, best first."""
        if embeddings.shape[-1] != self.weights.shape[1]:
            raise ValueError(
                f"image embeddings have {embeddings.shape[-1]} dimensions, these class embeddings "
                f"{self.weights.shape[1]}: rebuild the classifier with this model"
            )
        probs, scores = self.probabilities(embeddings), embeddings @ self.weights.T
        k = min(top_k, len(self.class_names))
        order = np.argsort(-probs, axis=-1)[:, :k]
        return [
            [Prediction(self.class_names[j], float(probs[i, j]), float(scores[i, j])) for j in row]
            for i, row in enumerate(order)
        ]

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors with the class names and temperature in its metadata."""
        meta = {
            "class_names": json.dumps(self.class_names),
            "logit_scale": str(self.logit_scale),
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
        }
        save_file({"weights": self.weights}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZeroShotClassifier:
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a saved cliplab zero-shot classifier ({error})") from None
        if "class_names" not in meta:
            raise ValueError(f"{path} is not a saved cliplab zero-shot classifier")
        weights = load_file(str(Path(path)))["weights"]
        return cls(
            json.loads(meta["class_names"]),
            weights,
            float(meta["logit_scale"]),
            meta.get("model", ""),
            meta.get("model_fingerprint", ""),
        )
