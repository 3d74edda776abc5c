"""Export a pipeline's two encoders to ONNX for serving elsewhere (onnxruntime, TensorRT, ...).

``export_onnx(pipeline, folder)`` writes

* ``image_encoder.onnx``: ``pixels`` float32 ``[batch, 3, n, n]`` -> ``image_features`` ``[batch, embed_dim]``;
* ``text_encoder.onnx``: ``token_ids`` int64 ``[batch, context_length]`` -> ``text_features`` ``[batch, embed_dim]``
  (for a Hugging Face text tower, rows padded with its padding id, and its tokenizer files in ``tokenizer/``);
* ``cliplab_onnx.json``: the preprocessing settings, the tokenizer's context length and special ids,
  the embedding size and the logit scale.

Features are projected and unnormalised, as :meth:`cliplab.Pipeline.encode_image` returns them; the
graphs compute in float32 from the pipeline's float32 weights, or, with ``int8=True``, are the
calibrated int8 model as QDQ graphs (int8 weights, the calibration's activation scales; see
:mod:`cliplab.quantize.onnx`). Needs the ``onnx`` extra (``pip install 'cliplab[onnx]'``).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .extras import require
from .quantize import int8_model
from .quantize.calibrate import pixel_range
from .quantize.onnx import exporting, store_weights_as_int8

if TYPE_CHECKING:
    from .api import Pipeline
    from .model import CLIP

OPSET = 18


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(token_ids)


def export_onnx(
    pipeline: Pipeline,
    folder: str | os.PathLike,
    encoders: tuple[str, ...] = ("image", "text"),
    int8: bool = False,
) -> Path:
    """Write the ``encoders`` (``image``, ``text``) of ``pipeline`` and their settings to ``folder``; returns it.
    ``int8``: the int8 model with ``pipeline.calibration`` (required) as QDQ graphs."""
    require("onnx", "onnx", "ONNX export")  # torch.onnx.export needs onnx and onnxscript
    require("onnxscript", "onnx", "ONNX export")
    folder = Path(folder)
    model = copy.deepcopy(pipeline.model).float().cpu().eval()  # the float32 master, on the CPU
    calibration = pipeline.int8_calibration if int8 else None
    if int8:
        if calibration is None:
            raise ValueError(
                "ONNX export in int8 needs a calibration (per-token scales have no ONNX form): "
                "run `cliplab calibrate MODEL IMAGES... --texts FILE` first"
            )
        model = int8_model(model, calibration, pixel_range(pipeline))
    folder.mkdir(parents=True, exist_ok=True)
    n, context = model.image_size, model.context_length
    pixels = torch.zeros(2, 3, n, n)
    # The text tower computes only up to the batch's last end token; traced with an end token in the
    # last position, the graph keeps all context_length positions and reads each row at its own end.
    token_ids = torch.zeros(2, context, dtype=torch.long)
    token_ids[:, 0], token_ids[:, -1] = pipeline.tokenizer.sot_token_id, pipeline.tokenizer.eot_token_id
    batch = {0: "batch"}
    hf_text = bool(getattr(model, "has_text_tower", False))
    with torch.no_grad(), warnings.catch_warnings(), exporting(model):
        # The tracer's notes on Python-side shape logic: the end-token slice is traced at full length, on purpose.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter; torch.export cannot trace
        warnings.filterwarnings("ignore", message=".*aten::index.*")  # the data-dependent end-token slice yet
        if "image" in encoders:
            torch.onnx.export(
                _ImageEncoder(model),
                (pixels,),
                str(folder / "image_encoder.onnx"),
                dynamo=False,
                input_names=["pixels"],
                output_names=["image_features"],
                opset_version=OPSET,
                dynamic_axes={"pixels": batch, "image_features": batch},
            )
        if "text" in encoders:
            torch.onnx.export(
                _TextEncoder(model),
                (token_ids,),
                str(folder / "text_encoder.onnx"),
                dynamo=False,
                input_names=["token_ids"],
                output_names=["text_features"],
                opset_version=OPSET,
                dynamic_axes={"token_ids": batch, "text_features": batch},
            )
    if int8:
        for name in encoders:
            store_weights_as_int8(folder / f"{name}_encoder.onnx")
    tokenizer: dict[str, Any] = {
        "context_length": context,
        "sot_id": pipeline.tokenizer.sot_token_id,
        "eot_id": pipeline.tokenizer.eot_token_id,
        "pad_id": getattr(pipeline.tokenizer, "pad_token_id", 0),
    }
    if hf_text:  # the text tower's own tokenizer, in the Hugging Face layout, for runtimes without cliplab
        tokenizer.update(kind="huggingface", folder="tokenizer")
        pipeline.model.tokenizer.save(folder / "tokenizer")
    settings: dict[str, Any] = {
        "precision": "int8" if int8 else "fp32",
        "image_encoder": "image_encoder.onnx" if "image" in encoders else None,
        "text_encoder": "text_encoder.onnx" if "text" in encoders else None,
        "preprocess": pipeline.preprocess.config.to_dict(),
        "tokenizer": tokenizer,
        "embed_dim": pipeline.embed_dim,
        "logit_scale": pipeline.logit_scale,
        "outputs": "projected, unnormalised features (L2-normalise before comparing)",
    }
    (folder / "cliplab_onnx.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder
