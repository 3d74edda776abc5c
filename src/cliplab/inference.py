"""Inference precision: which dtype a device computes CLIP in, and the fast copy of a model that runs it.

``resolve_precision("auto", device)`` picks bfloat16 on CPUs with native bf16 arithmetic
(AVX512_BF16 or AMX), bf16 (or fp16 where bf16 is missing) on CUDA, and float32 elsewhere.
:func:`inference_model` returns the model to run in that dtype: for float32 the model itself;
otherwise a copy whose weights are cast, with LayerNorm and BatchNorm parameters kept in float32
(normalisation statistics are computed in float32), and, on CPU, each transformer block replaced by
a :class:`FusedBlock` that runs its linear layers through oneDNN with the bias, the activation and
the residual addition fused into the matrix product. Attention is PyTorch's fused
``scaled_dot_product_attention``, whose softmax accumulates in float32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .model import CLIP
from .model.layers import QuickGELU, ResidualAttentionBlock, Transformer

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NORMS = (nn.LayerNorm, nn.BatchNorm2d)
_QUICK_GELU_SCALE = 1.702


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512_BF16 or AMX) and oneDNN can use it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype to compute in: ``fp32``, ``bf16`` and ``fp16`` are taken as given; ``auto`` is bf16
    on a CPU with native bf16, bf16 or fp16 on CUDA, float32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision != "auto":
        return _DTYPES[precision]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, d in _DTYPES.items() if d == dtype)


def _fused_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FusedBlock(nn.Module):
    """Inference-only replacement of a :class:`ResidualAttentionBlock` on CPU, computing the same function.

    Each linear layer is one oneDNN call with its bias and what follows it fused in: the GELU or
    QuickGELU activation after ``c_fc``, the residual addition after ``out_proj`` and ``c_proj``.
    QuickGELU, ``h * sigmoid(1.702 h)``, equals ``silu(1.702 h) / 1.702``: the two factors are folded
    into the weights of ``c_fc`` and ``c_proj`` so that oneDNN's fused SiLU computes it.
    """

    def __init__(self, block: ResidualAttentionBlock, dtype: torch.dtype) -> None:
        super().__init__()
        self.heads = block.attn.heads
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2  # float32 parameters: normalised in float32

        def cast(t: torch.Tensor, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter((t.detach().float() * scale).to(dtype), requires_grad=False)

        quick = isinstance(block.mlp.gelu, QuickGELU)
        scale = _QUICK_GELU_SCALE if quick else 1.0
        self.qkv_weight, self.qkv_bias = cast(block.attn.in_proj_weight), cast(block.attn.in_proj_bias)
        self.out_weight, self.out_bias = cast(block.attn.out_proj.weight), cast(block.attn.out_proj.bias)
        self.fc_weight, self.fc_bias = cast(block.mlp.c_fc.weight, scale), cast(block.mlp.c_fc.bias, scale)
        self.proj_weight, self.proj_bias = cast(block.mlp.c_proj.weight, 1 / scale), cast(block.mlp.c_proj.bias)
        # oneDNN post-ops: "swish" is SiLU; "gelu" with algorithm "none" is the exact (erf) GELU.
        self.activation, self.algorithm = ("swish", "") if quick else ("gelu", "none")

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        linear = torch.ops.mkldnn._linear_pointwise
        n, length, width = x.shape
        h = F.layer_norm(x, (width,), self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        qkv = linear(h, self.qkv_weight, self.qkv_bias, "none", [], "")
        q, k, v = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(n, length, width)
        x = linear.binary(attended, x, self.out_weight, self.out_bias, "add")
        h = F.layer_norm(x, (width,), self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        h = linear(h, self.fc_weight, self.fc_bias, self.activation, [], self.algorithm)
        return linear.binary(h, x, self.proj_weight, self.proj_bias, "add")


def inference_model(model: CLIP, dtype: torch.dtype, device: str | torch.device) -> CLIP:
    """``model`` itself for float32; otherwise an eval-mode copy on ``device`` computing in ``dtype``
    (norm layers in float32, fused transformer blocks on CPU). ``model`` is left unchanged."""
    device = torch.device(device)
    if dtype == torch.float32:
        return model
    if model.config.is_composed:  # towers from other libraries: model/towers/inference.py
        from .model.towers.inference import tower_inference_model

        return tower_inference_model(model, dtype, device)  # type: ignore[return-value]
    fused = device.type == "cpu" and _fused_linear_available()
    norm_params = {
        f"{name}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, _NORMS)
        for p, _ in module.named_parameters(recurse=False)
    }
    state = {
        k: v.to(device, dtype) if v.is_floating_point() and k not in norm_params else v.to(device)
        for k, v in model.state_dict().items()
        if not (fused and ".resblocks." in k)
    }
    with torch.device("meta"):
        fast = CLIP(model.config)
    fast.load_state_dict(state, strict=not fused, assign=True)
    fast.eval().requires_grad_(False)
    for module in fast.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics stay float32 too
            module.float()
    if fused:  # built from the float32 blocks, so that folding QuickGELU's scale rounds once
        for ours, master in zip(_transformers(fast), _transformers(model)):
            ours.resblocks = nn.ModuleList(FusedBlock(block, dtype).to(device) for block in master.resblocks)
    return fast


def _transformers(model: CLIP) -> list[Transformer]:
    return [m for m in model.modules() if isinstance(m, Transformer)]
