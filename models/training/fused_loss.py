"""The LM head and the next-token cross-entropy in one pass, chunk by chunk: no (B, T, vocab) logits in memory.

A causal LM's last matmul makes (B*T, vocab) logits; cross-entropy then writes a log-softmax of
the same size, and its backward a zero-filled gradient and a softmax gradient of the same size
again. At vocab 8192 and 2048 tokens each is 64 MB in fp32 that streams through memory several
times: a quarter of a CPU training step. Here the head runs on chunks of rows that stay in cache,
and each chunk's gradients (softmax minus one-hot, times the head) are made while its logits are
at hand, as Liger Kernel's and Apple's Cut Cross-Entropy do on GPUs with Triton. Those need CUDA;
nothing in torch or transformers does it on a CPU, so it is written here in plain torch.

The model keeps its modules, parameters and state-dict keys: during training its head module is
swapped for :class:`HiddenStatesHead`, which holds the same weight Parameter and returns the hidden
states, so DDP, LoRA and checkpoints are unaffected, and the forward still goes through the
wrapper (DDP's gradient hooks, torch.compile).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
from torch import nn

from llmops.infra.config import TrainConfig
from llmops.models.model.kernels import matmul_t
from llmops.models.model.lora import base_model
from llmops.models.training.batching import IGNORE_INDEX

# Model types whose forward returns the head's output as the logits, unscaled and uncapped.
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3"})
_CHUNK_ELEMENTS = 2 ** 21  # rows per chunk * vocab: 8 MB of fp32 logits, which stay in a 32 MB L3
_TINY = 1e-30  # a target probability below this is recomputed in log space


def fuses_loss(cfg: TrainConfig, device: torch.device, precision: str, sharded: bool) -> bool:
    """Whether train.fused_loss applies: fp32 on CPU, not under FSDP (it swaps the parameters the fused head holds)."""
    return cfg.fused_loss and device.type == "cpu" and precision == "fp32" and not sharded


def chunk_rows(vocab: int) -> int:
    """Rows of logits computed at a time."""
    return max(16, _CHUNK_ELEMENTS // vocab)


def _matmul_t(a: torch.Tensor, b: torch.Tensor, onednn: bool) -> torch.Tensor:
    return matmul_t(a, b) if onednn else a @ b.t()


class LinearCrossEntropy(torch.autograd.Function):
    """Summed next-token NLL of ``hidden @ weight.T`` against ``targets``, with its gradients made in the forward.

    hidden (N, H), weight (V, H), targets (N,) with IGNORE_INDEX on rows that are not scored. The
    forward holds one (rows, V) chunk of logits at a time; the backward only scales the gradients
    it stored by the incoming one (the loss is a scalar).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, grads: bool, onednn: bool):
        rows = chunk_rows(weight.shape[0])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if grads else None
        grad_w_t = (torch.zeros(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
                    if grads else None)
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start:start + rows], targets[start:start + rows]
            logits = _matmul_t(h, weight, onednn)  # (rows, V)
            scored = t != IGNORE_INDEX
            safe_t = torch.where(scored, t, 0)[:, None]  # (rows, 1)
            # softmax is one fused pass, logsumexp is slower than softmax plus log: -log p_t is the NLL
            probs = torch.softmax(logits, dim=-1)
            p_t = probs.gather(1, safe_t).squeeze(1)
            nll = -p_t.log()
            underflow = (p_t < _TINY).nonzero().squeeze(1)
            if underflow.numel():  # p_t below fp32's normal range: exact from the logits for those rows
                rows_logits = logits[underflow]
                nll[underflow] = torch.logsumexp(rows_logits, -1) - rows_logits.gather(1, safe_t[underflow]).squeeze(1)
            loss += torch.where(scored, nll, 0.0).sum()
            if grads:
                del logits
                probs.scatter_add_(1, safe_t, torch.full_like(nll, -1.0)[:, None])  # minus the one-hot target
                if not bool(scored.all()):
                    probs.mul_(scored[:, None])
                grad_h[start:start + rows] = _matmul_t(probs, weight.t(), onednn)  # probs @ W: (rows, H)
                grad_w_t += _matmul_t(h.t(), probs.t(), onednn)  # h^T @ probs: (H, V)
        if grads:
            ctx.save_for_backward(grad_h, grad_w_t.t().contiguous())
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None


class HiddenStatesHead(nn.Module):
    """Stands in for a model's LM head: returns the hidden states, keeps the head's weight (same Parameter and key)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.weight = head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


class FusedHead:
    """The head's weight and the kernels to score hidden states with (see :class:`LinearCrossEntropy`)."""

    def __init__(self, weight: nn.Parameter, onednn: bool):
        self.weight, self.onednn = weight, onednn

    def summed_nll(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed NLL of every next token: hidden (B, T, H) from the model, labels (B, T) as for transformers."""
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # position t predicts token t + 1
        targets = labels[:, 1:].reshape(-1)
        grads = torch.is_grad_enabled() and (h.requires_grad or self.weight.requires_grad)
        return LinearCrossEntropy.apply(h, self.weight, targets, grads, self.onednn)


def fusable_head(model: nn.Module) -> Optional[nn.Linear]:
    """The model's LM head when its output is the logits as they are: a bias-free Linear of a listed model type."""
    hf = base_model(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    config = getattr(hf, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS or type(head) is not nn.Linear:
        return None
    return head if head.bias is None and head.weight.dtype == torch.float32 else None


@contextlib.contextmanager
def fused_head(model: nn.Module, enabled: bool, onednn: bool) -> Iterator[Optional[FusedHead]]:
    """While open, ``model`` returns hidden states as its "logits" and the yielded head scores them; None
    (the model untouched) when not ``enabled`` or its head cannot be fused. The head is restored on exit."""
    head = fusable_head(model) if enabled else None
    if head is None:
        yield None
        return
    hf = base_model(model)
    hf.set_output_embeddings(HiddenStatesHead(head))
    try:
        yield FusedHead(head.weight, onednn)
    finally:
        hf.set_output_embeddings(head)
