"""Device and precision of a run, and the forward pass's context: autocast, or fp32 linear layers through oneDNN."""
from __future__ import annotations

import functools
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Optional

import torch

from llmops.models.model.kernels import CpuMatmul, linear_kernels, use_onednn
from llmops.models.training.checkpoint import TrainingError

log = logging.getLogger("llmops.training")


@functools.cache
def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    rows = [line.split(":", 1)[-1] for line in _cpuinfo() if line.startswith(("flags", "Features"))]
    return frozenset(flag for row in rows for flag in row.split())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where unreadable)."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")


def native_bf16(flags: frozenset[str]) -> Optional[bool]:
    """Whether CPU ``flags`` say bf16 is computed natively (AVX512-BF16, AMX, Arm BF16); None when unknown."""
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else None


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: only there can bf16 autocast beat fp32."""
    return native_bf16(cpu_flags()) is True


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision ``requested`` means on ``device`` without measuring: ``auto`` is bf16 on CUDA (fp16 without
    it) and fp32 on CPU (calibration may choose otherwise, models/training/calibration.py).

    bf16 on a CPU without native bf16 runs, emulated and slower than fp32, with a warning; fp16 needs CUDA.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision=fp16 needs CUDA; use fp32 (or bf16) on CPU")
    if requested == "bf16" and device.type == "cpu" and not cpu_native_bf16():
        log.warning("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): autocast emulates "
                    "it, expect it slower than fp32 (train.precision=auto measures)")
    return requested


def resolve_compile(requested, device: torch.device) -> bool:
    """train.compile: auto compiles on CUDA only (on CPU it pays ~1.1x for a cold compile of ~30 s)."""
    return device.type == "cuda" if requested == "auto" else bool(requested)


class ForwardContext:
    """Makes the forward pass's context: bf16/fp16 autocast with fp32 weights; for fp32, the oneDNN
    linear layers of :mod:`llmops.models.model.kernels` where ``cpu_matmul`` picks them, or nothing."""

    def __init__(self, device: torch.device, precision: str, cpu_matmul: CpuMatmul = "aten"):
        self.device, self.precision = device, precision
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.onednn = use_onednn(cpu_matmul, device, precision)

    def __call__(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else linear_kernels(self.onednn)
