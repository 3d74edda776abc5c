"""The reduced-precision copy of a model with towers from other libraries (see :mod:`cliplab.inference`).

Weights are cast to the inference dtype except normalisation layers (LayerNorm, BatchNorm and their
running statistics stay float32: BatchNorm in bfloat16 costs EfficientNet-Lite0 features a cosine
of ~0.9986 against float32; in float32 it keeps them above 0.999). Convolutions run channels-last
(the towers do that at every precision). On CPU in bfloat16, every linear layer runs as one oneDNN
call with its bias fused (:class:`OneDNNLinear`; MiniLM's 256 typical queries: 1.29 s -> 0.93 s on
2 busy cores, the same numbers), and cliplab's own towers in the model get the same fused blocks as
in a model made only of them. Text batches are computed up to their longest text by the text towers
themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class OneDNNLinear(nn.Module):
    """Inference-only replacement of an ``nn.Linear`` on CPU: oneDNN's matrix product with the bias fused
    (PyTorch's ``addmm`` path copies its operands on every call in bfloat16)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _replace_linears(module: nn.Module) -> None:
    for parent in list(module.modules()):
        if isinstance(parent, nn.MultiheadAttention):  # reads out_proj's tensors itself
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, OneDNNLinear(child))


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
            ours.resblocks = nn.ModuleList(FusedBlock(block, dtype).to(device) for block in master.resblocks)
        if dtype == torch.bfloat16:
            _replace_linears(fast)
    return fast
