"""The training loop: AdamW, warmup + cosine, clipping, mixed precision, accumulation, resumable checkpoints,
metrics."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from llmops.infra.config import TrainConfig
from llmops.models.data.packing import TokenData
from llmops.models.training.batching import fixed_batches, make_sampler
from llmops.models.training.checkpoint import Checkpointer, TrainerState, TrainingError
from llmops.models.training.distillation import Teacher
from llmops.models.training.distributed import Parallel
from llmops.models.training.fused_loss import FusedHead, fused_head, fuses_loss
from llmops.models.training.optim import lr_at, make_optimizer
from llmops.models.training.precision import ForwardContext, resolve_compile, resolve_device, resolve_precision
from llmops.models.training.preflight import flops_per_token, measure_step_seconds, peak_flops
from llmops.models.training.setup import prepare_model
from llmops.models.training.steps import diverged, forward_backward, micro_loss, optimizer_step, unscale_and_clip

log = logging.getLogger("llmops.training")


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, as written to the run's metrics.jsonl."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float  # real (non-padding) tokens
    tokens_seen: int
    elapsed_s: float
    memory_mb: float
    val_loss: Optional[float] = None
    skipped: Optional[bool] = None  # fp16: the loss scaler found inf/NaN gradients and skipped the update
    mfu: Optional[float] = None  # model FLOPs utilisation per device, when its peak is known (train.peak_tflops)
    kl: Optional[float] = None  # distillation: the step's mean divergence term (times T²) per target position

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None})


@dataclass
class TrainOutcome:
    model: torch.nn.Module  # as trained: a LoRA model is still wrapped (see models/model/lora.py merge_for_deployment)
    state: TrainerState
    resumed_from_step: Optional[int]
    device: str
    precision: str
    final_train_loss: float


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: TokenData, batch_size: int, batches: int,
                  device: torch.device, autocast, head: Optional[FusedHead] = None) -> Optional[float]:
    """Mean next-token loss over a fixed prefix of the validation examples (the same every time)."""
    model.eval()
    total, count = 0.0, 0
    for batch in fixed_batches(data, batch_size, batches):
        batch = batch.to(device)
        with autocast():
            total += micro_loss(model, batch, 1, batch.targets, head).float().item() * batch.targets
        count += batch.targets
    model.train()
    return total / count if count else None


def warmup_seconds(model: torch.nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device,
                   precision: str, parallel: Optional[Parallel] = None) -> Optional[float]:
    """Time forward + backward of the loop's first-shaped micro-batch (preflight's duration estimate).

    The weights are untouched (no optimizer exists yet), gradients are cleared, and the RNG is
    forked, so a run that measures trains exactly as one that does not. Under train.distributed
    (``parallel``) a rank times its slice of the global batch, on the sharded model under FSDP.
    """
    if cfg.preflight_steps == 0:
        return None
    parallel = parallel or Parallel()
    autocast = ForwardContext(device, precision, cfg.cpu_matmul)
    prepare_model(model, cfg, device, autocast.onednn, parallel)
    batch = next(fixed_batches(data, cfg.batch_size // parallel.world_size, 1)).to(device)

    def step() -> None:
        with autocast():
            loss = micro_loss(model, batch, 1, batch.targets, head)
        loss.backward()
        model.zero_grad(set_to_none=True)

    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), \
            fused_head(model, fuses_loss(cfg, device, precision, parallel.sharded), autocast.onednn) as head:
        return measure_step_seconds(step, device, cfg.preflight_steps)


def train(model: torch.nn.Module, train_data: TokenData, val_data: TokenData, cfg: TrainConfig,
          checkpointer: Checkpointer, metrics_path: Path,
          on_metrics: Optional[Callable[[StepMetrics], None]] = None,
          parallel: Optional[Parallel] = None, teacher: Optional[Teacher] = None) -> TrainOutcome:
    """Train ``model`` until ``max_steps`` or the time budget, resuming from the latest checkpoint.

    ``train_data``/``val_data`` are packed blocks (n, block_size) for train.batching=pack, or
    ragged documents (models/data/packing.py Ragged) for pad. Every step appends a line to
    ``metrics_path``. A non-finite loss stops the run with a TrainingError; the last good
    checkpoint stays in place.

    Under torch.distributed (``parallel`` from ``init_parallel`` in models/training/distributed.py) every rank
    calls this: each trains on its slice of the same global batch, the logged loss is the mean over
    ranks, and only rank 0 writes the metrics and checkpoints, which keep the single-process format.

    With ``teacher`` (models/training/distillation.py) the student is distilled: its loss mixes the cross-entropy
    with the divergence from the teacher (logged as ``kl``), the fused head is off (the student's logits are
    needed), validation stays plain cross-entropy, and checkpoints hold the student alone.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    parallel = parallel or Parallel()
    device = resolve_device(cfg.device)
    autocast = ForwardContext(device, resolve_precision(cfg.precision, device), cfg.cpu_matmul)
    fuses = fuses_loss(cfg, device, autocast.precision, parallel.sharded) and teacher is None
    try:
        with fused_head(model, fuses, autocast.onednn) as head:
            return _train(model, train_data, val_data, cfg, checkpointer, metrics_path, on_metrics, parallel,
                          autocast, head, teacher)
    finally:
        torch.set_num_threads(threads)


def _train(model, train_data, val_data, cfg, checkpointer, metrics_path, on_metrics, parallel: Parallel,
           autocast: ForwardContext, head: Optional[FusedHead], teacher: Optional[Teacher] = None) -> TrainOutcome:
    device, precision = autocast.device, autocast.precision
    if parallel.sharded and precision == "fp16":
        raise TrainingError("train.precision=fp16 with distributed.strategy=fsdp is not supported: use bf16")
    sampler = make_sampler(train_data, cfg.batching, cfg.batch_size, cfg.seed)
    prepare_model(model, cfg, device, autocast.onednn, parallel)
    wrapped = parallel.wrap(model, device)  # DDP; under FSDP the model prepare_model sharded
    optimizer = make_optimizer(wrapped, cfg, device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if autocast.onednn:
        log.info("fp32 linear layers run through oneDNN (train.cpu_matmul=%s; see llmops.models.model.kernels)",
                 cfg.cpu_matmul)
    if head is not None:
        log.info("the LM head and the loss run fused, without (batch, tokens, vocab) logits (train.fused_loss)")
    if teacher is not None:
        teacher.to(device)
        log.info("distilling: loss %s, alpha %g, temperature %g", teacher.cfg.loss, teacher.cfg.alpha,
                 teacher.cfg.temperature)

    # the metrics file travels inside each checkpoint, so after a crash it is rewound with the model
    carried = {"metrics.jsonl": metrics_path} if parallel.is_main else {}
    state, resumed = TrainerState(), checkpointer.latest()
    parallel.barrier()  # every rank has chosen the same checkpoint before rank 0 may write a newer one
    if resumed is not None:
        state = parallel.load(checkpointer, resumed, wrapped, optimizer, scaler, device, carried)
        log.info("resuming from the checkpoint at step %d", resumed)
    else:
        if parallel.is_main:
            metrics_path.unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)
    last_saved = resumed or 0  # decided from state, not the store: every rank must agree on when to save
    peak = peak_flops(device, precision, cfg.peak_tflops)
    # unique parameters of the whole model (FSDP's DTensor parameters report their global size), per device
    model_flops = flops_per_token(model, cfg.block_size) / parallel.world_size if peak else 0.0
    step_model = torch.compile(wrapped) if resolve_compile(cfg.compile, device) else wrapped
    if parallel.is_main:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics = open(metrics_path, "a", encoding="utf-8") if parallel.is_main else contextlib.nullcontext()
    with metrics as metrics_file, _progress(cfg.max_steps, state.step, parallel.is_main) as bar:
        while state.step < cfg.max_steps:
            if cfg.budget_s and state.elapsed_s >= cfg.budget_s:
                log.info("time budget of %.0f s spent at step %d", cfg.budget_s, state.step)
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, state.step, state.elapsed_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_value, tokens = forward_backward(step_model, sampler, state, cfg, device, autocast, scaler,
                                                  parallel, head, teacher)
            loss_value = parallel.mean(loss_value)
            kl = parallel.mean(teacher.pop_step_mean()) if teacher is not None else None
            if not math.isfinite(loss_value):
                raise diverged("loss", loss_value, state, cfg, precision, checkpointer)
            grad_norm = unscale_and_clip(wrapped, optimizer, scaler, cfg)
            # a finite loss can still give inf/NaN gradients: stepping on them would poison the weights
            # (and the next checkpoint); under fp16 the scaler skips such a step and lowers its scale
            if not scaler.is_enabled() and not math.isfinite(grad_norm):
                raise diverged("the gradient norm", grad_norm, state, cfg, precision, checkpointer)
            skipped = optimizer_step(optimizer, scaler)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = parallel.max(time.perf_counter() - t0)
            state.step += 1
            state.tokens_seen += tokens
            state.elapsed_s += dt
            val_loss = None
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                # every rank scores the same validation batches (FSDP's forward needs them all)
                val_loss = estimate_loss(wrapped, val_data, cfg.batch_size, cfg.eval_batches, device, autocast, head)
                state.last_val_loss = val_loss
            m = StepMetrics(state.step, loss_value, lr, grad_norm, tokens / dt, state.tokens_seen, state.elapsed_s,
                            _memory_mb(device), val_loss, skipped or None,
                            model_flops * tokens / dt / peak if peak else None, kl)
            if parallel.is_main:
                metrics_file.write(m.to_json() + "\n")
                metrics_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{m.tokens_per_s:.0f}")
                if on_metrics:
                    on_metrics(m)
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps:
                parallel.save(checkpointer, wrapped, optimizer, state, scaler, carried)
                last_saved = state.step
    if state.step and last_saved < state.step:
        parallel.save(checkpointer, wrapped, optimizer, state, scaler, carried)
    rows = read_metrics(metrics_path) if parallel.is_main and metrics_path.exists() else []
    final_loss = rows[-1]["loss"] if rows else float("nan")
    return TrainOutcome(parallel.unwrap(wrapped), state, resumed, str(device), precision, final_loss)


def _progress(total: int, initial: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", mininterval=2.0, leave=False,
                disable=not enabled)


def read_metrics(path: Path) -> list[dict]:
    """The metrics a run logged, one dict per step; a torn last line (crash mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
