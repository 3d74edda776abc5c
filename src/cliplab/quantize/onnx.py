"""The int8 model as ONNX: QDQ graphs (QuantizeLinear / DequantizeLinear around each matrix product and
convolution) with the calibration's scales and the int8 weights cliplab runs, which ONNX Runtime fuses
into its int8 kernels (QLinearMatMul, MatMulIntegerToFloat, QLinearConv).

The export traces the int8 layers' fake-quantized float forward (:func:`exporting`), then
:func:`store_weights_as_int8` puts the weights back into the file as int8 constants. The format has
per-tensor activation scales and per-channel weight scales, which is what a calibrated
model uses; per-token scales (a model without a calibration) have no ONNX form, so export needs one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
from torch import nn

from .layers import Int8Block, Int8Conv2d, Int8Linear

__all__ = ["exporting", "store_weights_as_int8"]


@contextlib.contextmanager
def exporting(model: nn.Module) -> Iterator[nn.Module]:
    """Switch ``model``'s int8 layers to their fake-quantized float forward (exportable) meanwhile."""
    layers = [m for m in model.modules() if isinstance(m, (Int8Block, Int8Linear, Int8Conv2d))]
    for layer in layers:
        layer.exporting = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.exporting = False


def store_weights_as_int8(path: str | os.PathLike) -> int:
    """Rewrite the exported ONNX file at ``path`` so that each matrix product and convolution whose input is
    quantized (comes from a DequantizeLinear) reads its weight as DequantizeLinear(int8 constant, per-channel
    scale). The exported weights are the int8 model's, dequantized: each output channel's largest magnitude
    is exactly 127 steps, so the scales and int8 values are recovered exactly. Returns how many were stored."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    nodes, stored = [], 0
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        quantized_input = source is not None and source.op_type == "DequantizeLinear"
        weight_name = node.input[1] if len(node.input) > 1 else ""
        if node.op_type in ("MatMul", "Conv", "Gemm") and quantized_input and weight_name in constants:
            weight = constants[weight_name].astype(np.float32)
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if node.op_type == "Conv" or transposed else weight.ndim - 1
            reduce = tuple(d for d in range(weight.ndim) if d != axis)
            absmax = np.abs(weight).max(axis=reduce)
            scale = np.where(absmax > 0, absmax / 127, 1.0).astype(np.float32)
            shape = [1] * weight.ndim
            shape[axis] = -1
            q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            base = f"{node.name or weight_name}_weight"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q, f"{base}_int8"),
                    numpy_helper.from_array(scale, f"{base}_scale"),
                    numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_zero"),
                ]
            )
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{base}_int8", f"{base}_scale", f"{base}_zero"],
                    [f"{base}_dequantized"],
                    name=f"{base}_DequantizeLinear",
                    axis=axis,
                )
            )
            node.input[1] = f"{base}_dequantized"
            stored += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(path))
    return stored
