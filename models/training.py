"""The training loop: AdamW, warmup + cosine, clipping, mixed precision, resumable checkpoints, metrics."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from infra.config import TrainConfig
from models.checkpoint import Checkpointer, TrainerState

log = logging.getLogger("llmops.training")


class TrainingError(RuntimeError):
    """Training cannot start or cannot continue (diverged, misconfigured)."""


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens_seen: int
    elapsed_s: float
    memory_mb: float
    val_loss: Optional[float] = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None})


@dataclass
class TrainOutcome:
    model: PreTrainedModel
    state: TrainerState
    resumed_from_step: Optional[int]
    device: str
    precision: str
    final_train_loss: float


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """bf16 on CUDA by default; fp32 on CPU (these CPUs lack native bf16: autocast is 2.5x slower)."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision=fp16 needs CUDA; use fp32 (or bf16) on CPU")
    return requested


def lr_at(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``.

    Progress through the decay is the larger of step progress and time progress (when a
    wall-clock budget is set), so a time-budgeted run still ends its schedule at min_lr.
    Written by hand because library schedulers only know steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_minutes:
        progress = max(progress, elapsed_s / (cfg.max_minutes * 60))
    progress = min(1.0, progress)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices only (not norms or biases), fused when available."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def build_model(config: PretrainedConfig, seed: int, init_from: Optional[str] = None) -> PreTrainedModel:
    """A fresh model from ``config`` (seeded), or a pretrained one from a local path or hub id."""
    torch.manual_seed(seed)
    if init_from:
        return AutoModelForCausalLM.from_pretrained(init_from, attn_implementation="sdpa")
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class BlockSampler:
    """Deterministic epochs over the training blocks: epoch e uses permutation(seed + e).

    The position (epoch, cursor) lives in the checkpoint, so a resumed run sees exactly the
    batches an uninterrupted run would have seen.
    """

    def __init__(self, blocks: np.ndarray, batch_size: int, seed: int):
        if len(blocks) < batch_size:
            raise TrainingError(
                f"only {len(blocks)} training blocks for a batch of {batch_size}: "
                f"lower train.batch_size or train.block_size, or add data"
            )
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    def next(self, state: TrainerState) -> torch.Tensor:
        if state.cursor + self.batch_size > len(self.blocks):
            state.epoch, state.cursor = state.epoch + 1, 0
        if self._perm_epoch != state.epoch:
            self._perm = np.random.default_rng(self.seed + state.epoch).permutation(len(self.blocks))
            self._perm_epoch = state.epoch
        idx = np.sort(self._perm[state.cursor: state.cursor + self.batch_size])
        state.cursor += self.batch_size
        return torch.from_numpy(self.blocks[idx].astype(np.int64))


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, blocks: np.ndarray, batch_size: int, batches: int,
                  device: torch.device, autocast) -> Optional[float]:
    """Mean loss over a fixed prefix of the validation blocks (the same blocks every time)."""
    n = min(len(blocks), batch_size * batches)
    if n == 0:
        return None
    model.eval()
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        x = torch.from_numpy(blocks[start:min(n, start + batch_size)].astype(np.int64)).to(device)
        with autocast():
            total += model(input_ids=x, labels=x).loss.float().item() * len(x)
        count += len(x)
    model.train()
    return total / count


def train(model: PreTrainedModel, train_blocks: np.ndarray, val_blocks: np.ndarray, cfg: TrainConfig,
          checkpointer: Checkpointer, metrics_path: Path,
          on_metrics: Optional[Callable[[StepMetrics], None]] = None) -> TrainOutcome:
    """Train ``model`` until ``max_steps`` or the time budget, resuming from the latest checkpoint.

    Every step appends a line to ``metrics_path``. A non-finite loss stops the run with a
    TrainingError; the last good checkpoint stays in place.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(model, train_blocks, val_blocks, cfg, checkpointer, metrics_path, on_metrics)
    finally:
        torch.set_num_threads(threads)


def _train(model, train_blocks, val_blocks, cfg, checkpointer, metrics_path, on_metrics) -> TrainOutcome:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    model.train()
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    # the metrics file travels inside each checkpoint, so after a crash it is rewound with the model
    carried = {"metrics.jsonl": metrics_path}
    state, resumed = TrainerState(), checkpointer.latest()
    if resumed is not None:
        state = checkpointer.load(resumed, model, optimizer, scaler, device, files=carried)
        log.info("resuming from the checkpoint at step %d", resumed)
    else:
        metrics_path.unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)
    step_model = torch.compile(model) if cfg.compile else model
    sampler = BlockSampler(train_blocks, cfg.batch_size, cfg.seed)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * train_blocks.shape[1]
    with open(metrics_path, "a", encoding="utf-8") as metrics_file, _progress(cfg.max_steps, state.step) as bar:
        while state.step < cfg.max_steps:
            if cfg.max_minutes and state.elapsed_s >= cfg.max_minutes * 60:
                log.info("time budget of %.1f min spent at step %d", cfg.max_minutes, state.step)
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, state.step, state.elapsed_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_value = 0.0
            for _ in range(cfg.grad_accum_steps):
                x = sampler.next(state).to(device, non_blocking=True)
                with autocast():
                    loss = step_model(input_ids=x, labels=x).loss / cfg.grad_accum_steps
                scaler.scale(loss).backward()
                loss_value += loss.detach().float().item()
            if not math.isfinite(loss_value):
                last = checkpointer.latest()
                where = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint was written yet"
                raise TrainingError(
                    f"loss became {loss_value} at step {state.step}; {where}. "
                    f"Lower train.lr (now {cfg.lr}), keep grad_clip on, or use fp32."
                )
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            state.step += 1
            state.tokens_seen += tokens_per_step
            state.elapsed_s += dt
            val_loss = None
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                val_loss = estimate_loss(model, val_blocks, cfg.batch_size, cfg.eval_batches, device, autocast)
                state.last_val_loss = val_loss
            m = StepMetrics(state.step, loss_value, lr, float(grad_norm), tokens_per_step / dt,
                            state.tokens_seen, state.elapsed_s, _memory_mb(device), val_loss)
            metrics_file.write(m.to_json() + "\n")
            metrics_file.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{m.tokens_per_s:.0f}")
            if on_metrics:
                on_metrics(m)
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps:
                checkpointer.save(model, optimizer, state, scaler, files=carried)
    if state.step and (checkpointer.latest() or 0) < state.step:
        checkpointer.save(model, optimizer, state, scaler, files=carried)
    rows = read_metrics(metrics_path) if metrics_path.exists() else []
    final_loss = rows[-1]["loss"] if rows else float("nan")
    return TrainOutcome(model, state, resumed, str(device), precision, final_loss)


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", mininterval=2.0, leave=False)


def read_metrics(path: Path) -> list[dict]:
    """The metrics a run logged, one dict per step; a torn last line (crash mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
