"""The optimizer and the learning-rate schedule: AdamW with decoupled weight decay, warmup + cosine."""
from __future__ import annotations

import logging
import math

import torch

from llmops.infra.config import TrainConfig

log = logging.getLogger("llmops.training")


def lr_at(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``.

    Progress through the decay is the larger of step progress and time progress (when a
    wall-clock budget is set), so a time-budgeted run still ends its schedule at min_lr.
    Written by hand because library schedulers only know steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.budget_s:
        progress = max(progress, elapsed_s / cfg.budget_s)
    progress = min(1.0, progress)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, weight decay on weight matrices only (not norms or biases).

    Fused (one kernel for every parameter) when ``train.fused_adamw`` and this torch supports it
    for the parameters' device and dtype; the default implementation otherwise.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if cfg.fused_adamw:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError) as exc:
            log.info("fused AdamW unavailable here (%s); using the default implementation", exc)
    return torch.optim.AdamW(groups, **kwargs)
