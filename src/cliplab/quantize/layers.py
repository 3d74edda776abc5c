"""int8 layers for CPU inference: matrix products and convolutions in oneDNN's int8 kernels (AVX512-VNNI
or AMX), float32 everywhere else.

Weights are int8 per output channel, symmetric (scale ``max |w| / 127`` per row). Activations are
quantized in one of two ways:

* **static**, from a calibration's ranges: uint8 with a per-tensor scale and zero point. Where a
  LayerNorm feeds the product, the scale and zero point are folded into its affine parameters, so that
  quantizing costs a clamp and a cast; the first MLP layer writes uint8 for the second directly; and
  attention's value projection is pre-divided by the attention output's scale, so that its output
  needs only rounding. Each row's result depends only on that row (not on the rest of the batch).
* **dynamic**, without a calibration: int8 per token (each row its own scale ``max |x| / 127``),
  computed at run time; slower (the scales are applied after the product), also batch-independent.

oneDNN applies the bias, GELU / SiLU and the residual addition inside the product ("add" post-op; its
"sum" post-op would write into the residual tensor, which may be the caller's input).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import QuickGELU, ResidualAttentionBlock

__all__ = ["Int8Block", "Int8Conv2d", "Int8Linear", "Int8Matrix", "uint8_params"]

_QUICK_GELU_SCALE = 1.702
_UINT8_TOP = 255.5  # after adding 0.5: truncation toward zero then rounds to 0..255
Range = tuple[float, float]


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point mapping ``[lo, hi]`` (widened to include 0) onto 0..255."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max(hi - lo, 1e-8) / 255
    return scale, min(max(round(-lo / scale), 0), 255)


def int8_scale(lo: float, hi: float) -> float:
    """Symmetric scale mapping ``[-max|lo|,|hi|, +...]`` onto -127..127."""
    return max(abs(float(lo)), abs(float(hi)), 1e-8) / 127


def quantize_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``round(x / scale) + zero_point`` saturated to uint8 (round half up), ``x`` left unchanged."""
    return x.mul(1 / scale).add_(zero_point + 0.5).clamp_(0, _UINT8_TOP).to(torch.uint8)


# Signed activations travel as uint8 with this zero point: the same integers to oneDNN, whose s8 x s8
# products have native kernels only with AMX; with VNNI alone (AMD Zen 4/5) signed inputs fall to a
# reference path thousands of times slower (0.14 GOP/s against 700 for u8 x s8, measured on Zen).
SIGNED_ZERO_POINT = 128


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a 2-D ``x`` on a symmetric grid of -127..127 steps, one scale per row, stored as uint8
    offset by :data:`SIGNED_ZERO_POINT`: ``(uint8 rows, scales [rows, 1])``."""
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    scale = torch.maximum(hi, lo.neg_()).float().clamp_(min=1e-8).div_(127)
    return (x / scale).round_().add_(SIGNED_ZERO_POINT).to(torch.uint8), scale


def fake_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` quantized to uint8 and back, as ops that export to ONNX QuantizeLinear + DequantizeLinear."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


def fake_int8(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)


class Int8Matrix:
    """A weight ``[out, in]`` as int8 per output channel, prepacked for oneDNN, and its float32 bias.

    ``scale`` multiplies the weight and bias before quantization (a folded constant, e.g. QuickGELU's)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0) -> None:
        w = weight.detach().float().reshape(weight.shape[0], -1) * scale
        self.out_features, self.in_features = w.shape
        self.weight_scale = (w.abs().amax(dim=1) / 127).clamp_(min=1e-12)
        self.qweight = torch.round(w / self.weight_scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)
        self.weight_zero_point = torch.zeros(self.out_features, dtype=torch.int64)
        self.bias = None if bias is None else (bias.detach().float() * scale).contiguous()

    def dequantized_t(self, row_factor: torch.Tensor | None = None) -> torch.Tensor:
        """The int8 weight as float32, transposed (``[in, out]``), for ONNX export (whose post-processing in
        :mod:`.onnx` stores it back as int8: each column's largest magnitude is exactly 127 steps).
        ``row_factor`` rescales output channels."""
        scale = self.weight_scale if row_factor is None else self.weight_scale * row_factor
        return (self.qweight.float() * scale[:, None]).t()

    def __call__(
        self,
        xq: torch.Tensor,
        x_scale: float,
        x_zero_point: int,
        out_dtype: torch.dtype | None = torch.float32,
        activation: str = "none",
        algorithm: str = "",
        residual: torch.Tensor | None = None,
        out_scale: float = 1.0,
        out_zero_point: int = 0,
        bias: bool = True,
    ) -> torch.Tensor:
        """``xq`` (uint8 or int8 ``[rows, in]``, meaning ``(xq - zp) * scale``) times the weight, plus the
        bias, then ``activation`` ("none", "gelu", "swish") or ``+ residual``; written as ``out_dtype``,
        or as uint8 ``round(y / out_scale) + out_zero_point`` when ``out_dtype`` is None. ``bias=False``
        leaves the bias out."""
        args = (xq, x_scale, x_zero_point, self.packed, self.weight_scale, self.weight_zero_point)
        b = self.bias if bias else None
        if residual is not None:
            return torch.ops.onednn.qlinear_pointwise.binary(
                *args, residual, b, 1.0, 0, residual.dtype, 1.0, 0, "add", 1.0, "none", [], ""
            )
        return torch.ops.onednn.qlinear_pointwise(
            *args, b, out_scale, out_zero_point, out_dtype, activation, [], algorithm
        )

    def dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` in float32 for float rows ``x``, quantized per token."""
        xq, scale = quantize_per_token(x)
        y = self(xq, 1.0, SIGNED_ZERO_POINT, bias=False).mul_(scale)  # rows in their own units, then scaled back
        return y if self.bias is None else y.add_(self.bias)


class Int8Linear(nn.Module):
    """Inference-only replacement of an ``nn.Linear``: static when ``input_range`` is given, else dynamic.
    Returns the input's dtype."""

    def __init__(self, linear: nn.Linear, input_range: Range | None = None) -> None:
        super().__init__()
        self.matrix = Int8Matrix(linear.weight, linear.bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qparams = uint8_params(*input_range) if input_range is not None else None
        # an empty float32 tensor: code around the layer reads ``.weight.dtype`` to cast its input
        self.register_buffer("weight", torch.empty(0), persistent=False)

    @property
    def static(self) -> bool:
        return self.qparams is not None

    exporting = False  # set by cliplab.quantize.onnx: compute with ONNX-exportable fake quantization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exporting:
            if self.qparams is None:
                raise ValueError("ONNX export of int8 needs a calibration (per-token scales have no ONNX form)")
            y = fake_uint8(x.float(), *self.qparams) @ self.matrix.dequantized_t()
            return y if self.matrix.bias is None else y + self.matrix.bias
        rows = x.reshape(-1, self.in_features)
        if self.qparams is not None:
            y = self.matrix(quantize_uint8(rows, *self.qparams), *self.qparams)
        else:
            y = self.matrix.dynamic(rows.float())
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {'static' if self.static else 'dynamic'}"


class Int8Conv2d(nn.Module):
    """Inference-only replacement of an ``nn.Conv2d`` (with an optional BatchNorm folded in and ReLU
    fused) whose input is quantized per tensor with a calibrated range. Returns float32, channels-last."""

    def __init__(
        self,
        conv: nn.Conv2d,
        input_range: Range,
        batchnorm: nn.BatchNorm2d | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(f"int8 convolution needs explicit zero padding, got {conv.padding!r}")
        weight = conv.weight.detach().float()
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
        if batchnorm is not None:  # y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta
            mean, var = batchnorm.running_mean, batchnorm.running_var
            assert mean is not None and var is not None, "a BatchNorm in eval mode keeps running statistics"
            gamma = batchnorm.weight.detach().float() if batchnorm.weight is not None else torch.ones_like(var)
            beta = batchnorm.bias.detach().float() if batchnorm.bias is not None else torch.zeros_like(mean)
            factor = gamma / torch.sqrt(var.float() + batchnorm.eps)
            weight = weight * factor[:, None, None, None]
            bias = (bias - mean.float()) * factor + beta
        self.qparams = uint8_params(*input_range)
        self.weight_scale = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp_(min=1e-12)
        self.qweight = torch.round(weight / self.weight_scale[:, None, None, None]).clamp_(-127, 127).to(torch.int8)
        self.conv_args = ([*conv.stride], [*conv.padding], [*conv.dilation], conv.groups)
        self.packed = torch.ops.onednn.qconv_prepack(
            self.qweight, self.weight_scale, self.qparams[0], self.qparams[1], *self.conv_args, None
        )
        self.weight_zero_point = torch.zeros(weight.shape[0], dtype=torch.int64)
        self.bias = bias.contiguous()
        self.activation = "relu" if relu else "none"
        self.out_channels = weight.shape[0]
        self.register_buffer("weight", torch.empty(0), persistent=False)  # see Int8Linear

    exporting = False  # see Int8Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exporting:
            weight = self.qweight.float() * self.weight_scale[:, None, None, None]  # stored back as int8 in .onnx
            stride, padding, dilation, groups = self.conv_args
            y = F.conv2d(fake_uint8(x.float(), *self.qparams), weight, self.bias, stride, padding, dilation, groups)
            return torch.relu(y) if self.activation == "relu" else y
        xq = quantize_uint8(x.float(), *self.qparams)
        return torch.ops.onednn.qconv_pointwise(
            xq, *self.qparams, self.packed, self.weight_scale, self.weight_zero_point, self.bias,
            *self.conv_args, 1.0, 0, torch.float32, self.activation, [], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, activation={self.activation}"


class Int8Block(nn.Module):
    """Inference-only replacement of a :class:`ResidualAttentionBlock`: its four matrix products in int8,
    LayerNorm, softmax and the residual stream in float32, attention's two small products in
    ``attention_dtype`` (bf16 where the CPU has it) for images; causal (text) attention runs in float32,
    which on CPU is faster than bf16 for short sequences (3.7 vs 5.0 ms per layer for 256 queries of 16
    tokens, ViT-B/32's text tower, one core) and more exact.

    ``ranges`` holds the calibrated input ranges of ``in_proj``, ``out_proj``, ``c_fc`` and ``c_proj``;
    without them the block quantizes per token at run time.
    """

    def __init__(
        self,
        block: ResidualAttentionBlock,
        ranges: dict[str, Range] | None = None,
        attention_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        attn = block.attn
        mlp: Any = block.mlp  # an nn.Sequential of c_fc, gelu, c_proj
        self.heads, self.attention_dtype = attn.heads, attention_dtype
        self.width = attn.out_proj.in_features
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        quick = isinstance(mlp.gelu, QuickGELU)
        # QuickGELU(h) = silu(1.702 h) / 1.702: 1.702 folded into c_fc, 1 / 1.702 into c_proj (see FusedBlock)
        scale = _QUICK_GELU_SCALE if quick else 1.0
        self.activation, self.algorithm = ("swish", "") if quick else ("gelu", "none")
        self.static = ranges is not None
        in_weight, in_bias = attn.in_proj_weight.detach().float(), attn.in_proj_bias.detach().float()
        if ranges is not None:
            self.q_in = uint8_params(*ranges["in_proj"])
            self.s_attn = int8_scale(*ranges["out_proj"])
            self.q_fc = uint8_params(*ranges["c_fc"])
            lo, hi = ranges["c_proj"]
            self.q_proj = uint8_params(lo * scale, hi * scale)
            # values pre-divided by the attention output's scale: attention then yields int8 units
            in_weight, in_bias = in_weight.clone(), in_bias.clone()
            in_weight[2 * self.width :] /= self.s_attn
            in_bias[2 * self.width :] /= self.s_attn
            self.ln_1_affine = self._folded(block.ln_1, *self.q_in)
            self.ln_2_affine = self._folded(block.ln_2, *self.q_fc)
        self.qkv = Int8Matrix(in_weight, in_bias)
        self.out = Int8Matrix(attn.out_proj.weight, attn.out_proj.bias)
        self.fc = Int8Matrix(mlp.c_fc.weight, mlp.c_fc.bias, scale)
        self.proj = Int8Matrix(mlp.c_proj.weight.detach() / scale, mlp.c_proj.bias)
        self.quick = quick

    @staticmethod
    def _folded(norm: nn.LayerNorm, scale: float, zero_point: int) -> tuple[torch.Tensor, torch.Tensor]:
        """LayerNorm weight and bias that output ``y / scale + zero_point + 0.5`` (quantized by truncation)."""
        weight = norm.weight.detach().float() / scale
        bias = norm.bias.detach().float() / scale + (zero_point + 0.5)
        return weight.contiguous(), bias.contiguous()

    def _attention(self, qkv: torch.Tensor, n: int, length: int, causal: bool) -> torch.Tensor:
        q, k, v = qkv.view(n, length, 3, self.heads, self.width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out.transpose(1, 2).reshape(n * length, self.width)

    exporting = False  # see Int8Linear

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        if self.exporting:
            return self._fake_quantized(x.float(), causal)
        n, length, width = x.shape
        x = x.float().reshape(n * length, width)
        if not self.static:
            return self._dynamic(x, n, length, causal).view(n, length, width)
        eps = self.ln_1.eps
        h = F.layer_norm(x, (width,), *self.ln_1_affine, eps).clamp_(0, _UINT8_TOP).to(torch.uint8)
        qkv = self.qkv(h, *self.q_in, out_dtype=torch.float32 if causal else self.attention_dtype)
        attended = self._attention(qkv, n, length, causal)
        # reshape copied the attention output (heads were interleaved), so rounding it in place is safe
        aq = attended.round_().clamp_(-127, 127).add_(SIGNED_ZERO_POINT).to(torch.uint8)
        x = self.out(aq, self.s_attn, SIGNED_ZERO_POINT, residual=x)
        h = F.layer_norm(x, (width,), *self.ln_2_affine, self.ln_2.eps).clamp_(0, _UINT8_TOP).to(torch.uint8)
        h = self.fc(
            h,
            *self.q_fc,
            None,
            self.activation,
            self.algorithm,
            out_scale=self.q_proj[0],
            out_zero_point=self.q_proj[1],
        )
        return self.proj(h, *self.q_proj, residual=x).view(n, length, width)

    def _dynamic(self, x: torch.Tensor, n: int, length: int, causal: bool) -> torch.Tensor:
        width = self.width
        h = F.layer_norm(x, (width,), self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        qkv = self.qkv.dynamic(h) if causal else self.qkv.dynamic(h).to(self.attention_dtype)
        x = x + self.out.dynamic(self._attention(qkv, n, length, causal).float())
        h = F.layer_norm(x, (width,), self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        h = self.fc.dynamic(h)
        h = F.silu(h) if self.quick else F.gelu(h)  # c_fc carries 1.702 (QuickGELU) folded in
        return x + self.proj.dynamic(h)

    def _fake_quantized(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """The static forward in float32 with fake quantization, for ONNX export: the same int8 values and
        scales (values in their own units, the attention output quantized with its scale)."""
        if not self.static:
            raise ValueError("ONNX export of int8 needs a calibration (per-token scales have no ONNX form)")
        width, heads = self.width, self.heads
        assert self.qkv.bias is not None and self.out.bias is not None and self.fc.bias is not None
        with torch.no_grad():  # made of constants only, so the exporter folds them into initializers
            v_rows = torch.cat([torch.ones(2 * width), torch.full((width,), self.s_attn)])  # undo the pre-division
            qkv_weight, qkv_bias = self.qkv.dequantized_t(v_rows).contiguous(), self.qkv.bias * v_rows
        h = F.layer_norm(x, (width,), self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        qkv = fake_uint8(h, *self.q_in) @ qkv_weight + qkv_bias
        q, k, v = qkv.unflatten(-1, (3, heads, width // heads)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).flatten(2)
        x = x + fake_int8(attended, self.s_attn) @ self.out.dequantized_t() + self.out.bias
        h = F.layer_norm(x, (width,), self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        h = fake_uint8(h, *self.q_fc) @ self.fc.dequantized_t() + self.fc.bias
        h = F.silu(h) if self.quick else F.gelu(h)
        h = fake_uint8(h, *self.q_proj) @ self.proj.dequantized_t()
        return x + (h if self.proj.bias is None else h + self.proj.bias)

    def extra_repr(self) -> str:
        return f"width={self.width}, heads={self.heads}, {'static' if self.static else 'dynamic'}"
