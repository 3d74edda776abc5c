"""The public entry point: :func:`load` a checkpoint into a :class:`Pipeline` that turns images and
texts into vectors of one embedding space."""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import CheckpointError, LoadedCheckpoint, build_model, read_checkpoint, resolve, write_checkpoint
from .checkpoints.hub import published_names
from .export import export_onnx
from .identity import ModelIdentity, model_identity
from .images import ImageInput
from .inference import inference_model, precision_name, resolve_precision
from .model import CLIP, CLIPConfig
from .paths import DEFAULT_MODEL, models_dir
from .preprocess import PreprocessConfig, Preprocessor
from .quantize import Calibration, calibration_path, int8_model, int8_unavailable
from .quantize.calibrate import calibrate, pixel_range
from .quantize.cpu import Int8Warning, attention_dtype
from .tokenizer import Tokenizer, default_tokenizer

if TYPE_CHECKING:
    from .model.towers.hf_tokenizer import HFTokenizer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_path(
    name_or_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local checkpoint path for a model: a path, a model in ``$CLIPLAB_HOME/models`` (default
    ``cliplab-lite``), or a published name fetched through the hub cache."""
    name = str(name_or_path or DEFAULT_MODEL)
    named = models_dir() / name
    if "/" not in name and named.is_dir():
        return named
    if name == DEFAULT_MODEL:
        raise CheckpointError(
            f"the default model {DEFAULT_MODEL!r} is not in {models_dir()} yet: create it with `cliplab setup "
            "--install` (it says what it installs), or pass a checkpoint path or name"
        )
    try:
        return resolve(name, cache_dir)
    except CheckpointError as error:
        if Path(name).expanduser().exists() or "neither an existing file" not in str(error):
            raise
        known = sorted(p.name for p in models_dir().glob("*") if p.is_dir()) + published_names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise CheckpointError(f"{error}.{hint}") from None


def model_name(name_or_path: str | os.PathLike | None) -> str:
    """How a store or classifier records a model: a named model or hub name as given, a local path
    made absolute (so that the record works from any folder)."""
    name = str(name_or_path or DEFAULT_MODEL)
    if "/" not in name and (models_dir() / name).is_dir():
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class Pipeline:
    """A CLIP model with its preprocessing and tokenizer.

    ``encode_image`` / ``encode_text`` return projected, unnormalised features as OpenAI's API does;
    ``embed_images`` / ``embed_texts`` return L2-normalised float32 numpy arrays.

    ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``; see :mod:`cliplab.inference`; or ``int8``,
    see :mod:`cliplab.quantize`) sets what the encoders compute in; ``auto`` is bf16 where the hardware
    multiplies it natively. ``int8`` runs on CPUs with VNNI or AMX (elsewhere it falls back to ``auto``
    with an :class:`~cliplab.quantize.cpu.Int8Warning`), static with ``calibration`` (see
    :meth:`calibrate`), per token without. ``model`` stays the float32 master (what :meth:`save` writes
    and training uses); the encoders run ``inference_model``, a reduced-precision copy built on first use.
    """

    def __init__(
        self,
        model: CLIP,
        preprocess: Preprocessor | None = None,
        tokenizer: Tokenizer | HFTokenizer | None = None,
        device: str | torch.device | None = None,
        name: str = "",
        checkpoint: LoadedCheckpoint | None = None,
        precision: str = "auto",
        calibration: Calibration | None = None,
    ):
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess or Preprocessor(PreprocessConfig.from_dict(model.config.preprocess()))
        self.tokenizer = tokenizer or model.tokenizer or default_tokenizer()
        self.name = name
        self.checkpoint = checkpoint
        self.int8 = precision == "int8"
        if self.int8 and (reason := int8_unavailable(self.device)):
            self.int8, fallback = False, precision_name(resolve_precision("auto", self.device))
            warnings.warn(
                f"int8 is not available: {reason}; computing in {fallback} instead", Int8Warning, stacklevel=2
            )
        self.dtype = torch.float32 if self.int8 else resolve_precision(precision.replace("int8", "auto"), self.device)
        self.calibration = calibration
        self._inference_model: CLIP | None = None

    def __repr__(self) -> str:
        return (
            f"Pipeline(name={self.name!r}, device={self.device}, precision={self.precision}, "
            f"image_size={self.preprocess.image_size})"
        )

    @property
    def precision(self) -> str:
        """The precision the encoders compute in: ``fp32``, ``bf16``, ``fp16`` or ``int8``."""
        return "int8" if self.int8 else precision_name(self.dtype)

    @property
    def inference_model(self) -> CLIP:
        """The model the encoders run: ``model`` in float32, else its copy in :attr:`dtype` (built once;
        call :meth:`refresh` after changing ``model``'s weights)."""
        if self._inference_model is None:
            if self.int8:
                calibration = self.int8_calibration
                self._inference_model = int8_model(self.model, calibration, pixel_range(self), attention_dtype())
            else:
                self._inference_model = inference_model(self.model, self.dtype, self.device)
        return self._inference_model

    @property
    def int8_calibration(self) -> Calibration | None:
        """:attr:`calibration` if it was made for these weights; else None (with a warning if it was not)."""
        if self.calibration is not None and self.calibration.fingerprint != self.identity.fingerprint:
            warnings.warn(
                f"the int8 calibration of {self.name or 'this model'} was made for other weights; ignoring it "
                "(int8 quantizes per token): run `cliplab calibrate` again",
                Int8Warning,
                stacklevel=4,
            )
            return None
        return self.calibration

    def calibrate(
        self, images: Sequence[ImageInput] | torch.Tensor = (), texts: Sequence[str] = (), progress: bool = False
    ) -> Calibration:
        """Calibrate static int8 on ``images`` and ``texts`` (see :func:`cliplab.quantize.calibrate.calibrate`),
        use it from now on, and return it (``.save(path)`` writes it; :func:`load` reads it from
        :func:`cliplab.quantize.calibration_path` of the model)."""
        self.calibration = calibrate(self, images, texts, progress=progress)
        self.refresh()
        return self.calibration

    def refresh(self) -> None:
        """Forget the reduced-precision copy, so the next encoding uses ``model``'s current weights."""
        self._inference_model = None

    @property
    def identity(self) -> ModelIdentity:
        """The model's name and the fingerprint of its weights and preprocessing (:mod:`cliplab.identity`)."""
        return model_identity(self)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def logit_scale(self) -> float:
        """The learned temperature's multiplier, exp(logit_scale), as used for zero-shot softmax."""
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.model.context_length)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image features ``[N, embed_dim]``, float32, of preprocessed pixels ``[N, 3, H, W]``."""
        return self.inference_model.encode_image(pixels.to(self.device, non_blocking=True)).float()

    @torch.inference_mode()
    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Projected text features ``[N, embed_dim]``, float32, of token ids ``[N, L]``."""
        return self.inference_model.encode_text(token_ids.to(self.device)).float()

    def embed_images(self, images: Iterable[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """L2-normalised embeddings ``[N, embed_dim]`` of image paths, bytes or PIL images.

        Raises :class:`cliplab.images.ImageLoadError` naming the first file that cannot be read.
        """
        images = list(images)
        out = np.empty((len(images), self.embed_dim), dtype=np.float32)
        bar = tqdm(total=len(images), unit="img", disable=not progress, desc="embedding images")
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            features = self.encode_image(self.preprocess.batch(chunk, pin_memory=self.device.type == "cuda"))
            out[start : start + len(chunk)] = F.normalize(features.float(), dim=-1).cpu().numpy()
            bar.update(len(chunk))
        bar.close()
        return out

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """L2-normalised embeddings ``[N, embed_dim]`` of texts, in input order.

        Texts are batched by token length, so each batch is computed only up to its own longest
        text (the text tower stops at the batch's last end token): short texts cost what they are.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer.encode_batch(texts, context_length=self.model.context_length)
        ids = torch.from_numpy(tokens.ids)
        order = torch.argsort(torch.from_numpy(tokens.lengths), stable=True)  # by length: end-token position
        bar = tqdm(total=len(texts), unit="text", disable=not progress, desc="embedding texts")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            features = self.encode_text(ids[rows])
            out[rows.numpy()] = F.normalize(features.float(), dim=-1).cpu().numpy()
            bar.update(len(rows))
        bar.close()
        return out

    def similarity(self, images: Iterable[ImageInput], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarities ``[n_images, n_texts]``."""
        return self.embed_images(images) @ self.embed_texts(texts).T

    def export_onnx(self, folder: str | os.PathLike, int8: bool | None = None) -> Path:
        """Write ``image_encoder.onnx``, ``text_encoder.onnx`` and their settings to ``folder``: float32, or
        int8 QDQ graphs from :attr:`calibration` (``int8``, default: whether this pipeline runs int8; see
        :mod:`cliplab.export`; needs the ``onnx`` extra)."""
        return export_onnx(self, folder, int8=self.int8 if int8 is None else int8)

    def save(self, dest: str | os.PathLike, format: str = "cliplab", metadata: dict | None = None) -> Path:
        """Write the model in ``format`` (``cliplab``, ``open_clip``, ``huggingface``, ``openai``)."""
        return write_checkpoint(self.model, dest, format, self.preprocess.config.to_dict(), metadata)


def load(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    precision: str = "auto",
) -> Pipeline:
    """Load a CLIP checkpoint from a path or a published name into a :class:`Pipeline`.

    ``name_or_path``: a file or folder in any format cliplab reads, a model in ``$CLIPLAB_HOME/models``
    (default ``cliplab-lite``), or a hub name such as ``ViT-B-32/openai`` (needs a network or the
    hub cache). ``quick_gelu`` sets the activation of bare state dicts that do not record it.
    ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``, ``int8``) is what the encoders compute in; with
    ``int8``, the calibration stored beside the model (``cliplab calibrate``) is used when there is one.
    """
    path = resolve_model_path(name_or_path, cache_dir)
    name = model_name(name_or_path)
    ckpt = read_checkpoint(path, quick_gelu=quick_gelu)
    try:
        model = build_model(ckpt)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    ckpt.state_dict = model.state_dict()  # the same values, shared with the model rather than kept twice
    preprocess = Preprocessor(PreprocessConfig.from_dict(ckpt.preprocess))
    if preprocess.image_size != model.image_size:
        raise CheckpointError(
            f"{path}: preprocessing resizes to {preprocess.image_size} px but the model takes {model.image_size} px"
        )
    tokenizer = model.tokenizer or Tokenizer(context_length=model.context_length)
    stored = calibration_path(path)
    calibration = Calibration.load(stored) if precision == "int8" and stored.is_file() else None
    return Pipeline(model, preprocess, tokenizer, device, name, ckpt, precision=precision, calibration=calibration)


def build(
    config: CLIPConfig | str | os.PathLike,
    device: str | torch.device | None = None,
    precision: str = "auto",
    base_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
) -> Pipeline:
    """A :class:`Pipeline` for a new model from its config: a :class:`~cliplab.model.CLIPConfig` or a
    model config file (``.toml`` / ``.json``, see docs/towers.md).

    Towers from other libraries get their pretrained weights (unless ``pretrained`` is false), their
    own preprocessing and tokenizer; projection heads and cliplab's own towers are initialised from a
    fixed seed, so one config always builds the same model. Relative paths in the config resolve
    against ``base_dir`` (a config file's folder, for a file). Save the result with :meth:`Pipeline.save`.
    """
    from .checkpoints.model_config import parse_model_config
    from .model.towers.build import build as build_towers

    name = ""
    if not isinstance(config, CLIPConfig):
        path = Path(config)
        name, base_dir = str(path.resolve()), base_dir or path.parent
        config = parse_model_config(path)
    try:
        built = build_towers(config, base_dir, pretrained=pretrained)
    except (ValueError, FileNotFoundError) as error:  # unknown architectures, missing files, weights that do not fit
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(str(error)) from None
    preprocess = Preprocessor(PreprocessConfig.from_dict(built.preprocess))
    return Pipeline(built.model, preprocess, built.tokenizer, device, name, precision=precision)
