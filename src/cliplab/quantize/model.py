"""The int8 copy of a model: its matrix products and convolutions replaced by :mod:`.layers`.

The walk is generic, so that it applies to any tower (cliplab's, timm's, Hugging Face's): each
``ResidualAttentionBlock`` becomes a fused :class:`~.layers.Int8Block`; every other ``nn.Linear`` an
:class:`~.layers.Int8Linear` (static with a calibrated range, else per token); every ``nn.Conv2d``
with a known input range an :class:`~.layers.Int8Conv2d`, with the BatchNorm after it folded in and
its ReLU fused (cliplab's ResNet stem and bottlenecks, and ``nn.Sequential`` runs of conv, norm,
ReLU). A convolution without a range stays float32: the first one's range is the preprocessing's
pixel range, the others come from a calibration. Only the classes themselves are replaced (a
subclass may compute something else, like timm's dynamic "same" padding), and never the projections
inside an ``nn.MultiheadAttention`` (it reads their weights directly). Everything else is the
master's own float32 parameters, shared, not copied.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

from ..model.layers import ResidualAttentionBlock
from ..model.vision import Bottleneck, ModifiedResNet, VisionTransformer
from .calibration import Calibration
from .layers import Int8Block, Int8Conv2d, Int8Linear, Range

__all__ = ["int8_model", "int8_summary"]

M = TypeVar("M", bound=nn.Module)


def _shared_copy(model: M) -> M:
    """A copy of the module tree that shares every parameter and buffer with ``model``."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _conv_norm_relu(root: nn.Module) -> Iterator[tuple[str, str | None, str | None]]:
    """``(conv, batchnorm, relu)`` names to fuse: cliplab's ResNet stem and bottlenecks (``convN`` with
    ``bnN`` and ``reluN``; a bottleneck's last ReLU follows the residual addition, so it stays), and
    ``nn.Sequential`` runs of Conv2d, BatchNorm2d and an optional ReLU."""
    for name, module in root.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (ModifiedResNet, Bottleneck)):
            for i in (1, 2, 3):
                fuse_relu = not (isinstance(module, Bottleneck) and i == 3)
                yield f"{prefix}conv{i}", f"{prefix}bn{i}", f"{prefix}relu{i}" if fuse_relu else None
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for i, (child, layer) in enumerate(children):
                if isinstance(layer, nn.Conv2d) and i + 1 < len(children):
                    bn_name, bn = children[i + 1]
                    if isinstance(bn, nn.BatchNorm2d) and bn.num_features == layer.out_channels:
                        relu = children[i + 2] if i + 2 < len(children) else None
                        relu_name = f"{prefix}{relu[0]}" if relu is not None and isinstance(relu[1], nn.ReLU) else None
                        yield f"{prefix}{child}", f"{prefix}{bn_name}", relu_name


def _pixel_convs(root: nn.Module) -> set[str]:
    """The convolutions that read the pixels (their range is the preprocessing's): cliplab's towers'
    ``conv1``, and in another image tower (``visual``) its first convolution, if it takes 3 channels."""
    names = set()
    for name, module in root.named_modules():
        if isinstance(module, (VisionTransformer, ModifiedResNet)):
            names.add(f"{name}.conv1" if name else "conv1")
    visual = getattr(root, "visual", None)
    if isinstance(visual, nn.Module) and not isinstance(visual, (VisionTransformer, ModifiedResNet)):
        first = next(((n, m) for n, m in visual.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first[1].in_channels == 3:
            names.add(f"visual.{first[0]}")
    return names


def int8_model(
    model: M,
    calibration: Calibration | None = None,
    pixel_range: Range | None = None,
    attention_dtype: torch.dtype = torch.float32,
) -> M:
    """An eval-mode int8 copy of the float32 ``model`` (on the CPU) for inference; ``model`` is unchanged.

    ``calibration`` gives static ranges (else linear layers quantize per token and convolutions other
    than the first stay float); ``pixel_range`` is the first convolution's input range without one;
    ``attention_dtype`` is what attention's two small products compute in."""
    ranges = dict(calibration.ranges) if calibration is not None else {}
    fast = _shared_copy(model).eval().requires_grad_(False)
    for name in _pixel_convs(fast):
        if pixel_range is not None:
            ranges.setdefault(name, pixel_range)

    blocks = [(n, m) for n, m in fast.named_modules() if isinstance(m, ResidualAttentionBlock)]
    for name, block in blocks:
        keys = {"in_proj": f"{name}.attn.in_proj", "out_proj": f"{name}.attn.out_proj"}
        keys |= {"c_fc": f"{name}.mlp.c_fc", "c_proj": f"{name}.mlp.c_proj"}
        static = all(key in ranges for key in keys.values())
        block_ranges = {k: ranges[key] for k, key in keys.items()} if static else None
        _set(fast, name, Int8Block(block, block_ranges, attention_dtype))

    for conv_name, bn_name, relu_name in list(_conv_norm_relu(fast)):
        conv = fast.get_submodule(conv_name)
        if not isinstance(conv, nn.Conv2d) or not _plain_conv(conv) or conv_name not in ranges:
            continue
        bn = fast.get_submodule(bn_name) if bn_name else None
        if bn_name and type(bn) is not nn.BatchNorm2d:  # another norm (timm's with its activation): no fusion
            continue
        _set(fast, conv_name, Int8Conv2d(conv, ranges[conv_name], bn, relu=relu_name is not None))  # type: ignore[arg-type]
        if bn is not None and bn_name:
            _set(fast, bn_name, nn.Identity())
        if relu_name:
            _set(fast, relu_name, nn.Identity())

    inside_mha = {
        f"{n}.{c}"
        for n, m in fast.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_children()
    }
    for name, module in list(fast.named_modules()):
        if _plain_conv(module) and name in ranges:
            _set(fast, name, Int8Conv2d(module, ranges[name]))
        elif type(module) is nn.Linear and name not in inside_mha:
            _set(fast, name, Int8Linear(module, ranges.get(name)))
    return fast


def _plain_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` itself (not a subclass with its own forward, like timm's dynamic "same" padding)
    with explicit zero padding: what :class:`Int8Conv2d` computes."""
    return type(module) is nn.Conv2d and isinstance(module.padding, tuple) and module.padding_mode == "zeros"


def int8_summary(model: nn.Module) -> dict[str, int]:
    """How many layers of an int8 model run static int8, per-token int8, or stay float:
    ``{"static", "dynamic", "float"}`` (a fused transformer block counts once)."""
    counts = {"static": 0, "dynamic": 0, "float": 0}
    for module in model.modules():
        if isinstance(module, (Int8Block, Int8Linear)):
            counts["static" if module.static else "dynamic"] += 1
        elif isinstance(module, Int8Conv2d):
            counts["static"] += 1
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            counts["float"] += 1
    return counts
