"""Where and how the engine computes: device choice and the fast numeric format for it.

Measured on a 2-core AVX-512 CPU (width 160, batch 8, 112 px, one training step): NCHW fp32
21.8 s, channels-last fp32 9.5 s, channels-last bf16 6.0 s; bf16 on NCHW was slower (57 s), and
torch.compile did not help on CPU. So the engine always uses channels-last, and bf16 autocast on
CUDA and on CPUs with native bf16 instructions.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from ..errors import ParameterError

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is missing is an input error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("--device cuda was asked for, but no CUDA GPU is available")
    if name not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"unknown device {name!r} (auto, cpu, cuda)")
    return torch.device(name)


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise ParameterError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, bf16: bool):
    if not bf16 or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
