"""Static int8 calibration: the range of every quantized layer's input over a set of images and texts,
stored beside the model as JSON with what the calibration measured.

A calibration belongs to one set of weights: it records the model's fingerprint
(:mod:`cliplab.identity`), and one made for other weights is ignored with a warning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write_text
from ..model.layers import SelfAttention

__all__ = ["CALIBRATION_FILE", "Calibration", "calibration_path", "record_ranges"]

CALIBRATION_FILE = "int8_calibration.json"
FORMAT_VERSION = 1


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where a model's calibration lives: ``int8_calibration.json`` in a model folder, or
    ``NAME.int8_calibration.json`` beside a single-file checkpoint."""
    path = Path(model_path)
    return path / CALIBRATION_FILE if path.is_dir() else path.with_name(f"{path.name}.{CALIBRATION_FILE}")


@dataclass
class Calibration:
    """Input ranges ``{layer: (min, max)}`` of a model's quantized layers, and what the calibration measured.

    ``quality`` holds, per tower, the cosine of int8 to float32 features on the calibration inputs
    (``{"images": {"count", "cosine_min", "cosine_mean"}, "texts": {...}}``); ``layers`` how many layers
    of the int8 model it makes static, leaves per-token or float (``{"static", "dynamic", "float"}``)."""

    ranges: dict[str, tuple[float, float]]
    fingerprint: str
    images: int = 0
    texts: int = 0
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    created: str = ""
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ranges"] = {name: [lo, hi] for name, (lo, hi) in sorted(self.ranges.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "calibration") -> Calibration:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{source}: calibration format {data.get('version')!r}, expected {FORMAT_VERSION}")
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
            return cls(
                ranges=ranges,
                fingerprint=str(data["fingerprint"]),
                images=int(data.get("images", 0)),
                texts=int(data.get("texts", 0)),
                quality={str(k): {str(m): float(x) for m, x in v.items()} for k, v in data.get("quality", {}).items()},
                layers={str(k): int(v) for k, v in data.get("layers", {}).items()},
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise ValueError(f"{source}: not a cliplab int8 calibration ({error})") from None

    def describe_layers(self) -> str:
        n = self.layers
        return f"{n.get('static', 0)} static int8 layers, {n.get('dynamic', 0)} per-token, {n.get('float', 0)} float"

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a cliplab int8 calibration")
        return cls.from_dict(data, str(path))


def quantized_inputs(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose input the int8 model quantizes, by calibration key: every ``nn.Linear`` and
    ``nn.Conv2d`` by its name, and every :class:`SelfAttention`'s in-projection as ``NAME.in_proj``."""
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            layers[name] = module
        elif isinstance(module, SelfAttention):
            layers[f"{name}.in_proj"] = module
    return layers


def record_ranges(model: nn.Module, run: Callable[[], object]) -> dict[str, tuple[float, float]]:
    """The ``(min, max)`` of each quantized layer's input while ``run()`` drives ``model`` (float32)."""
    ranges: dict[str, tuple[float, float]] = {}

    def hook(key: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            lo, hi = torch.aminmax(args[0].detach().float())
            old = ranges.get(key)
            ranges[key] = (float(lo), float(hi)) if old is None else (min(old[0], float(lo)), max(old[1], float(hi)))

        return record

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in quantized_inputs(model).items()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return ranges
