"""Calibrating a pipeline for static int8: run images and texts through the float32 model, record each
quantized layer's input range, then measure the int8 model against float32 on the same inputs."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..images import ImageInput
from .calibration import Calibration, record_ranges
from .cpu import attention_dtype
from .model import int8_model, int8_summary

if TYPE_CHECKING:
    from ..api import Pipeline

__all__ = ["calibrate", "pixel_range"]


def pixel_range(pipeline: Pipeline) -> tuple[float, float]:
    """The range of preprocessed pixels: ``(0 - mean) / std`` to ``(1 - mean) / std`` over the channels."""
    config = pipeline.preprocess.config
    lows = [(0.0 - m) / s for m, s in zip(config.mean, config.std)]
    highs = [(1.0 - m) / s for m, s in zip(config.mean, config.std)]
    return min(lows + highs), max(lows + highs)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
    return {"count": float(len(cos)), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def calibrate(
    pipeline: Pipeline,
    images: Sequence[ImageInput] | torch.Tensor = (),
    texts: Sequence[str] = (),
    batch_size: int = 32,
    progress: bool = False,
    quality_samples: int = 512,
) -> Calibration:
    """A static int8 calibration of ``pipeline``'s model from ``images`` (paths, bytes or PIL images, or
    preprocessed pixels ``[N, 3, n, n]``) and ``texts``; a tower given no inputs keeps per-token quantization. ``quality`` holds the cosine of
    int8 to float32 features, per tower, on the first ``quality_samples`` inputs of each."""
    if not len(images) and not texts:
        raise ValueError("calibration needs images or texts (or both): pass the inputs the model will see")
    model = pipeline.model  # the float32 master, on the pipeline's device
    kept: dict[str, list[torch.Tensor]] = {"images": [], "texts": []}  # inputs the quality check reuses
    exact: dict[str, list[torch.Tensor]] = {"images": [], "texts": []}
    bar = tqdm(total=len(images) + len(texts), unit="input", disable=not progress, desc="calibrating")

    def keep(tower: str, inputs: torch.Tensor, features: torch.Tensor) -> None:
        room = quality_samples - sum(len(t) for t in kept[tower])
        if room > 0:
            kept[tower].append(inputs[:room].cpu())
            exact[tower].append(features[:room].float().cpu())

    def run() -> None:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = chunk if isinstance(chunk, torch.Tensor) else pipeline.preprocess.batch(list(chunk))
            pixels = pixels.to(pipeline.device)
            keep("images", pixels, model.encode_image(pixels))
            bar.update(len(pixels))
        if texts:
            ids = pipeline.tokenize(list(texts))
            order = torch.argsort(ids.argmax(dim=-1), stable=True)  # by length, as embed_texts batches them
            for start in range(0, len(texts), 256):
                batch = ids[order[start : start + 256]].to(pipeline.device)
                keep("texts", batch, model.encode_text(batch))
                bar.update(len(batch))

    ranges = record_ranges(model, run)
    bar.close()
    calibration = Calibration(
        ranges=ranges,
        fingerprint=pipeline.identity.fingerprint,
        images=len(images),
        texts=len(texts),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    master = model if pipeline.device.type == "cpu" else copy.deepcopy(model).cpu()
    quantized = int8_model(master, calibration, pixel_range(pipeline), attention_dtype())
    calibration.layers = int8_summary(quantized)
    with torch.inference_mode():
        for tower, encode in (("images", quantized.encode_image), ("texts", quantized.encode_text)):
            if kept[tower]:
                int8 = torch.cat([encode(inputs).float() for inputs in kept[tower]])
                calibration.quality[tower] = _cosines(int8, torch.cat(exact[tower]))
    return calibration
