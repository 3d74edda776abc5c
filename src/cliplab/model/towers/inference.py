"""The reduced-precision copy of a model with towers from other libraries (see :mod:`cliplab.inference`).

Weights are cast to the inference dtype except normalisation layers (LayerNorm, BatchNorm and their
running statistics stay float32: BatchNorm in bfloat16 costs EfficientNet-Lite0 features a cosine
of ~0.9986 against float32; in float32 it keeps them above 0.999). Convolutions run channels-last
(the towers do that at every precision). cliplab's own towers in the model get the same fused CPU
blocks as in a model made only of them. Text batches are computed up to their longest text by the
text towers themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def tower_inference_model(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` computing in ``dtype`` (norms in float32)."""
    from ...inference import FusedBlock, _fused_linear_available
    from ..layers import Transformer

    fast = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    for module in fast.modules():
        if isinstance(module, _NORMS):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    if device.type == "cpu" and _fused_linear_available():  # cliplab's own towers, as in inference_model
        masters = [m for m in model.modules() if isinstance(m, Transformer)]
        for ours, master in zip([m for m in fast.modules() if isinstance(m, Transformer)], masters):
            ours.resblocks = nn.ModuleList(FusedBlock(block, dtype).to(device) for block in master.resblocks)  # type: ignore[arg-type]
    return fast
