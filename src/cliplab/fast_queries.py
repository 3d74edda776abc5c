"""Text queries without torch: ONNX Runtime over a cached export of a model's text encoder.

A one-shot ``cliplab search STORE "text"`` spends most of its time importing torch and loading the
model (about 1.5 s and more before any work) while the query itself costs milliseconds. So the first
text search of a store exports the model's text encoder to ONNX (float32, the same numbers as the
torch path within 1e-4) into ``$CLIPLAB_HOME/cache/text-queries/FINGERPRINT/``, keyed by the model
fingerprint the store records (:mod:`cliplab.identity`); later text searches tokenise with numpy and
encode with ONNX Runtime, never importing torch. A model whose fingerprint differs finds no cache,
so a cached encoder can only ever answer for the exact weights it was exported from.

Needs the ``onnx`` extra (``onnxruntime`` to run, ``onnx`` + ``onnxscript`` to export); without it,
searches take the torch path as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .identity import ModelIdentity
from .paths import cliplab_home
from .tokenizer import DEFAULT_VOCAB_PATH, Tokenizer

FORMAT_VERSION = 1
SETTINGS_FILE = "text_queries.json"
ENCODER_FILE = "text_encoder.onnx"

__all__ = ["OnnxTextQueries", "cache_folder", "save_text_queries"]


def cache_folder(fingerprint: str) -> Path:
    """Where the text encoder of the model with this fingerprint is cached."""
    return cliplab_home() / "cache" / "text-queries" / fingerprint


def _tokenizer_spec(tokenizer: Any, context_length: int) -> dict | None:
    """How to rebuild ``tokenizer`` without torch, or ``None`` for a kind this module cannot rebuild."""
    if isinstance(tokenizer, Tokenizer) and Path(tokenizer.vocab_path) == DEFAULT_VOCAB_PATH:
        return {"kind": "clip-bpe", "context_length": context_length}
    if getattr(tokenizer, "fingerprint", {}).get("kind") == "huggingface":  # its files: tokenizer/ of the export
        return {"kind": "huggingface", "folder": "tokenizer", "context_length": context_length}
    return None


def _build_tokenizer(spec: dict, folder: Path) -> Any:
    if spec.get("kind") == "clip-bpe":
        return Tokenizer(context_length=int(spec["context_length"]))
    if spec.get("kind") == "huggingface":  # a Hugging Face text tower's (tokenizers, no torch)
        from .model.towers.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_folder(folder / spec["folder"], int(spec["context_length"]))
    return None


class OnnxTextQueries:
    """A text encoder for queries: ``embed_texts`` returns L2-normalised float32 rows, as
    :meth:`cliplab.Pipeline.embed_texts` does. It answers only for the model of :attr:`identity`."""

    def __init__(self, identity: ModelIdentity, tokenizer: Any, session: Any):
        self.identity = identity
        self.tokenizer = tokenizer
        self.session = session

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    @classmethod
    def open(cls, fingerprint: str, threads: int | None = None) -> OnnxTextQueries | None:
        """The cached encoder of the model with ``fingerprint``, or ``None`` (no cache, an unreadable
        one, or no ONNX Runtime)."""
        folder = cache_folder(fingerprint)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            if settings.get("format") != FORMAT_VERSION:
                return None
            identity = ModelIdentity(**settings["model"])
            tokenizer = _build_tokenizer(settings["tokenizer"], folder)
            import onnxruntime
        except (OSError, ValueError, KeyError, TypeError, ImportError):
            return None
        if tokenizer is None or identity.fingerprint != fingerprint:
            return None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(
                str(folder / ENCODER_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception:
            return None
        return cls(identity, tokenizer, session)

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            ids = self.tokenizer.encode_batch(texts[start : start + batch_size]).ids
            (features,) = self.session.run(["text_features"], {"token_ids": ids})
            features = features.astype(np.float32)
            out[start : start + len(ids)] = features / np.linalg.norm(features, axis=-1, keepdims=True)
        return out

    def embed_images(self, images: Any, **_: Any) -> np.ndarray:
        raise ValueError("the cached text-query encoder embeds texts only; image queries load the whole model")


def save_text_queries(pipeline: Any) -> Path | None:
    """Export ``pipeline``'s text encoder for torch-free queries (once per model; an existing cache is
    kept). Returns the cache folder, or ``None`` when the ``onnx`` extra is missing or the model's
    tokenizer cannot be rebuilt without torch."""
    from .export import export_onnx
    from .extras import MissingExtraError

    identity = pipeline.identity
    folder = cache_folder(identity.fingerprint)
    if (folder / SETTINGS_FILE).is_file():
        return folder
    spec = _tokenizer_spec(pipeline.tokenizer, pipeline.model.context_length)
    if spec is None:
        return None
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{identity.fingerprint}.", dir=folder.parent))
    try:
        export_onnx(pipeline, building, encoders=("text",))
        settings = {
            "format": FORMAT_VERSION,
            "model": {"name": identity.name, "fingerprint": identity.fingerprint, "embed_dim": identity.embed_dim},
            "tokenizer": spec,
        }
        (building / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(building, folder)  # appears whole or not at all
    except MissingExtraError:
        return None
    except OSError:
        if not (folder / SETTINGS_FILE).is_file():  # not a concurrent export that won the rename
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(building)
    return folder
