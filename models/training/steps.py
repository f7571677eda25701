"""One optimizer step's mechanics: micro-batch losses, accumulation, unscale and clip, the step, divergence."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from llmops.infra.config import TrainConfig
from llmops.models.training.batching import IGNORE_INDEX, Batch, Sampler
from llmops.models.training.checkpoint import Checkpointer, TrainerState, TrainingError
from llmops.models.training.distillation import Teacher
from llmops.models.training.distributed import Parallel
from llmops.models.training.fused_loss import FusedHead


def micro_loss(model: torch.nn.Module, batch: Batch, accum_steps: int, window_targets: int,
               head: Optional[FusedHead] = None, teacher: Optional[Teacher] = None) -> torch.Tensor:
    """This micro-batch's share of the step's mean next-token loss.

    Packed blocks all hold the same number of targets, so each micro-batch's mean counts
    1/accum_steps. Padded batches differ in size: their summed loss is divided by the targets of
    the whole accumulation window, so every real token weighs the same. With ``head`` (the model
    inside :func:`llmops.models.training.fused_loss.fused_head`) the model returns hidden states and the head
    scores them without materializing the logits.

    With ``teacher`` (distillation; never with ``head``: the student's logits are needed) the share is
    ``(1 - alpha) * cross-entropy + alpha * divergence``, both summed over the same targets and weighed alike.
    """
    if teacher is not None:
        return _distill_loss(model, batch, accum_steps, window_targets, teacher)
    if head is not None:
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits  # (B, T, H)
        summed = head.summed_nll(hidden, batch.labels)
        return summed / (batch.targets * accum_steps if batch.attention_mask is None else window_targets)
    if batch.attention_mask is None:
        return model(input_ids=batch.input_ids, labels=batch.labels, use_cache=False).loss / accum_steps
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # (B, T, V)
    summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                             ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / window_targets


def _distill_loss(model: torch.nn.Module, batch: Batch, accum_steps: int, window_targets: int,
                  teacher: Teacher) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # (B, T, V)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                         ignore_index=IGNORE_INDEX, reduction="sum")
    alpha = teacher.cfg.alpha
    summed = (1 - alpha) * ce + alpha * teacher.summed_divergence(logits, batch)
    return summed / (batch.targets * accum_steps if batch.attention_mask is None else window_targets)


def forward_backward(model, sampler: Sampler, state: TrainerState, cfg: TrainConfig, device: torch.device,
                      autocast, scaler: torch.amp.GradScaler, parallel: Parallel,
                      head: Optional[FusedHead], teacher: Optional[Teacher] = None) -> tuple[float, int]:
    """Accumulate gradients over ``grad_accum_steps`` micro-batches; return (this rank's step loss, real tokens of
    the global batch).

    The window's micro-batches are drawn first: padded batches are weighted by the targets of
    the whole window (see :func:`micro_loss`). Under distribution each rank trains on its slice;
    DDP/FSDP average gradients over ranks, so a padded slice's summed loss is divided by the
    window's targets per rank, which makes the average weigh every token of the global window alike.
    """
    micro = [sampler.next_batch(state) for _ in range(cfg.grad_accum_steps)]
    window_targets = sum(b.targets for b in micro)
    if parallel.world_size > 1:
        window_targets = window_targets / parallel.world_size
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro):
        batch = parallel.shard(batch).to(device)
        with parallel.sync_gradients(model, last=i == len(micro) - 1):
            with autocast():
                loss = micro_loss(model, batch, cfg.grad_accum_steps, window_targets, head, teacher)
            scaler.scale(loss).backward()
        total += loss.detach().float()
    return total.item(), sum(b.tokens for b in micro)  # one host sync per step, not per micro-batch


def unscale_and_clip(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      cfg: TrainConfig) -> float:
    """The gradient norm before clipping. Gradients are unscaled first so the threshold applies to true gradients."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, already reduced over ranks
        grad_norm = grad_norm.full_tensor()
    return float(grad_norm)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Step and zero; return whether the scaler skipped the update.

    With fp16, inf/NaN gradients (a loss scale too high) make ``scaler.step`` skip the update and
    ``scaler.update`` lower the scale: a normal event early in training, logged, not an error.
    """
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return scale is not None and scaler.get_scale() < scale


def diverged(what: str, value: float, state: TrainerState, cfg: TrainConfig, precision: str,
              checkpointer: Checkpointer) -> TrainingError:
    """The error for a non-finite loss or gradient, raised before the weights take that step."""
    last = checkpointer.latest()
    where = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint was written yet"
    tips = [f"lower train.lr (now {cfg.lr})"]
    if not cfg.grad_clip:
        tips.append("turn gradient clipping on (train.grad_clip=1.0)")
    if precision != "fp32":
        tips.append(f"train in fp32 (train.precision=fp32, now {precision})")
    return TrainingError(f"{what} became {value} at step {state.step + 1}; {where}. Try: {'; '.join(tips)}.")
