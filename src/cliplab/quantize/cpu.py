"""Whether this machine can run cliplab's int8 path: a CPU with int8 dot-product instructions
(AVX512-VNNI, AVX-VNNI or AMX-INT8, read from ``/proc/cpuinfo``) and PyTorch's oneDNN int8 kernels."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..inference import cpu_supports_bf16

__all__ = ["INT8_CPU_FLAGS", "Int8Warning", "attention_dtype", "int8_cpu_flags", "int8_unavailable"]

#: /proc/cpuinfo flags of the int8 dot-product instructions oneDNN's int8 kernels are fast with
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


class Int8Warning(UserWarning):
    """int8 was asked for but runs otherwise: another precision here, or without its calibration."""


@functools.cache
def int8_cpu_flags() -> tuple[str, ...]:
    """The int8 dot-product flags this CPU reports (empty when none, or when /proc/cpuinfo is unreadable)."""
    try:
        words = set(CPUINFO.read_text().split())
    except OSError:
        return ()
    return tuple(flag for flag in INT8_CPU_FLAGS if flag in words)


def _kernels_available() -> bool:
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.onednn, op) for op in ("qlinear_pointwise", "qlinear_prepack", "qconv_pointwise")
    )


def int8_unavailable(device: str | torch.device) -> str | None:
    """Why int8 cannot run on ``device`` here, as a sentence, or None when it can."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"int8 runs on the CPU only (device {device}); use bf16 or fp16 on {device.type}"
    if not int8_cpu_flags():
        return "this CPU has no int8 dot-product instructions (none of " + ", ".join(INT8_CPU_FLAGS) + f" in {CPUINFO})"
    if not _kernels_available():
        return f"this PyTorch ({torch.__version__}) has no oneDNN int8 kernels (torch.ops.onednn.qlinear_pointwise)"
    return None


def attention_dtype() -> torch.dtype:
    """What the int8 model computes attention's two small products in: bf16 where the CPU has it natively."""
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32
