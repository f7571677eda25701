"""Device and precision of a run, and the forward pass's context: autocast, or fp32 linear layers through oneDNN."""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from llmops.models.model.kernels import CpuMatmul, linear_kernels, use_onednn
from llmops.models.training.checkpoint import TrainingError


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """bf16 on CUDA by default; fp32 on CPU, where the oneDNN kernels (models/model/kernels.py) and the fused loss
    (models/training/fused_loss.py) make fp32 nearly as fast as bf16 autocast on CPUs with native bf16, and
    autocast is slower than fp32 on CPUs without it (docs/architecture.md)."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision=fp16 needs CUDA; use fp32 (or bf16) on CPU")
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
