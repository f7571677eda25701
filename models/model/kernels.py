"""fp32 linear layers through oneDNN on CPUs where ATen's BLAS (MKL) takes a slow code path.

MKL picks its kernels by CPU vendor: on AMD it runs its AVX2 sgemm even where the CPU has
AVX-512, while oneDNN (bundled with torch) picks by instruction set. On the Zen 5 machines this
project runs on, oneDNN's fp32 matmul is about 2x MKL's for a transformer's shapes
(bench/results/training_throughput.md). No library routes a training step's fp32 matmuls through
oneDNN (ATen sends fp32 to oneDNN only with reduced-precision bf32/tf32 math), so this module
does it by hand: an autograd function whose forward and backward are oneDNN matmuls in full
fp32, and a TorchFunctionMode that sends ``F.linear`` to it. Weights, gradients and state dicts
are untouched, so DDP, FSDP, LoRA and checkpoints see the same modules and parameters.
"""
from __future__ import annotations

import contextlib
import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

CpuMatmul = Literal["auto", "aten", "onednn"]


# An opaque custom op, so torch.compile calls it as it is: inductor's own lowering of
# _linear_pointwise is for inference with frozen (constant) weights.
@torch.library.custom_op("llmops::onednn_matmul_t", mutates_args=())
def matmul_t(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a @ b.T (+ bias) through oneDNN: a (M, K), b (N, K), either may be a strided view; returns (M, N) contiguous."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


@matmul_t.register_fake
def _(a, b, bias=None):
    return a.new_empty(a.shape[0], b.shape[0])


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with oneDNN matmuls in the forward and the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.shape[-1])  # (B*T, in)
        y = matmul_t(flat, weight, bias)  # (B*T, out)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (B*T, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_t(g, weight.t()).view(x.shape)  # g @ W: (B*T, in)
        if ctx.needs_input_grad[1]:
            # g^T @ x computed as (x^T @ g)^T: oneDNN is ~2.5x faster in that orientation when
            # out_features is large (the LM head), and no slower otherwise
            grad_w = matmul_t(x.reshape(-1, x.shape[-1]).t(), g.t()).t().contiguous()  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def _plain_cpu_fp32(t: Optional[torch.Tensor]) -> bool:
    # subclasses (DTensor, quantized or fake tensors) keep their own dispatch
    return t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
                         and t.dtype == torch.float32)


class OneDNNLinearMode(TorchFunctionMode):
    """Inside it, every ``F.linear`` on plain CPU fp32 tensors runs through :class:`OneDNNLinear`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_args(*args, **kwargs)
            if (x.numel() and _plain_cpu_fp32(x) and _plain_cpu_fp32(weight) and _plain_cpu_fp32(bias)
                    and not torch.is_autocast_enabled("cpu")):
                return OneDNNLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def _linear_args(input, weight, bias=None):  # F.linear's signature
    return input, weight, bias


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=1)
def mkl_slow_here() -> bool:
    """True where ATen's fp32 matmuls go to MKL on a non-Intel CPU with AVX-512 (MKL runs its AVX2 code there).

    Decided from the CPU's vendor and instruction set, not by timing, so every process of a run
    (a resumed one, every rank) picks the same kernels and computes the same numbers.
    """
    if not torch.backends.mkl.is_available() or torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    return _cpu_vendor() not in ("", "GenuineIntel")


def _cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def use_onednn(setting: CpuMatmul, device: torch.device, precision: str) -> bool:
    """Whether fp32 linear layers on ``device`` run through oneDNN under ``train.cpu_matmul=setting``.

    auto: on CPUs where MKL is slow (:func:`mkl_slow_here`); onednn: on every CPU (an error if this
    torch lacks oneDNN); aten: never. Only for fp32 on CPU: autocast and GPUs keep their kernels.
    """
    if setting == "aten" or device.type != "cpu" or precision != "fp32":
        return False
    if setting == "onednn":
        if not onednn_available():
            raise ValueError("train.cpu_matmul=onednn: this torch build has no oneDNN (mkldnn); use auto or aten")
        return True
    return onednn_available() and mkl_slow_here()


def linear_kernels(enabled: bool) -> AbstractContextManager:
    """The context that routes fp32 ``F.linear`` to oneDNN when ``enabled``; a no-op otherwise."""
    return OneDNNLinearMode() if enabled else contextlib.nullcontext()


def recompute_contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
    """torch.utils.checkpoint's ``context_fn``: the forward runs as it is, the recomputation through oneDNN."""
    return contextlib.nullcontext(), OneDNNLinearMode()
