"""The training loop: AdamW, warmup + cosine, clipping, mixed precision, accumulation, resumable checkpoints, metrics."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from infra.config import TrainConfig
from models.batching import IGNORE_INDEX, Batch, BlockSampler, Sampler, TokenData, fixed_batches, make_sampler
from models.checkpoint import Checkpointer, TrainerState, TrainingError
from models.distributed import Parallel
from models.finetune import base_model
from models.fused_loss import FusedHead, fused_head, fuses_loss
from models.kernels import CpuMatmul, linear_kernels, recompute_contexts, use_onednn
from models.preflight import flops_per_token, measure_step_seconds, peak_flops

__all__ = ["BlockSampler", "StepMetrics", "TrainOutcome", "TrainingError", "build_model", "estimate_loss", "lr_at",
           "make_optimizer", "read_metrics", "train", "warmup_seconds"]

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

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None})


@dataclass
class TrainOutcome:
    model: torch.nn.Module  # as trained: a LoRA model is still wrapped (see models.finetune.merge_for_deployment)
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
    """bf16 on CUDA by default; fp32 on CPU, where models.kernels and models.fused_loss make fp32 nearly as fast as
    bf16 autocast on CPUs with native bf16, and autocast is slower than fp32 on CPUs without it (docs/architecture.md)."""
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
    linear layers of :mod:`models.kernels` where ``cpu_matmul`` picks them, or nothing."""

    def __init__(self, device: torch.device, precision: str, cpu_matmul: CpuMatmul = "aten"):
        self.device, self.precision = device, precision
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.onednn = use_onednn(cpu_matmul, device, precision)

    def __call__(self) -> ContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else linear_kernels(self.onednn)


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


def build_model(config: PretrainedConfig, seed: int, init_from: Optional[str] = None,
                attention: str = "sdpa") -> PreTrainedModel:
    """A fresh model from ``config`` (seeded), or a pretrained one from a local path or hub id."""
    torch.manual_seed(seed)
    if init_from:
        from models.finetune import load_pretrained

        return load_pretrained(init_from, attention)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


def enable_checkpointing(model: torch.nn.Module, onednn: bool = False) -> None:
    """Gradient (activation) checkpointing on the transformers model inside ``model``; idempotent.

    With ``onednn`` the recomputation in the backward pass runs the linear layers through oneDNN
    too (the forward's TorchFunctionMode is closed by then), so it saves what the forward saved.
    """
    base = base_model(model)
    if not base.supports_gradient_checkpointing:
        raise TrainingError(f"{type(base).__name__} does not support train.gradient_checkpointing")
    enabled = getattr(base, "is_activation_checkpointing", None)
    if enabled is None:
        enabled = base.is_gradient_checkpointing
    if enabled:
        return
    # non-reentrant checkpointing works when the inputs need no grad (LoRA's frozen embeddings)
    kwargs = {"use_reentrant": False}
    if onednn:
        kwargs["context_fn"] = recompute_contexts
    if hasattr(base, "activation_checkpointing_enable"):  # the newer name; the old one warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, onednn: bool = False,
                  parallel: Optional[Parallel] = None) -> None:
    """Checkpointing as configured, on ``device``, in training mode (idempotent: preflight and the loop both call it).

    Under FSDP (``parallel.sharded``) the model is sharded in place instead of moved: the whole
    model never goes to one device, and ranks other than 0 may pass a meta-device skeleton.
    """
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, onednn)
    if parallel is not None and parallel.sharded:
        parallel.wrap(model, device)
    else:
        model.to(device)
    model.train()


def micro_loss(model: torch.nn.Module, batch: Batch, accum_steps: int, window_targets: int,
               head: Optional[FusedHead] = None) -> torch.Tensor:
    """This micro-batch's share of the step's mean next-token loss.

    Packed blocks all hold the same number of targets, so each micro-batch's mean counts
    1/accum_steps. Padded batches differ in size: their summed loss is divided by the targets of
    the whole accumulation window, so every real token weighs the same. With ``head`` (the model
    inside :func:`models.fused_loss.fused_head`) the model returns hidden states and the head
    scores them without materializing the logits.
    """
    if head is not None:
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # (B, T, H)
        summed = head.summed_nll(hidden, batch.labels)
        return summed / (batch.targets * accum_steps if batch.attention_mask is None else window_targets)
    if batch.attention_mask is None:
        return model(input_ids=batch.input_ids, labels=batch.labels, use_cache=False).loss / accum_steps
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # (B, T, V)
    summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                             ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / window_targets


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
          on_metrics: Optional[Callable[[StepMetrics], None]] = None, parallel: Optional[Parallel] = None) -> TrainOutcome:
    """Train ``model`` until ``max_steps`` or the time budget, resuming from the latest checkpoint.

    ``train_data``/``val_data`` are packed blocks (n, block_size) for train.batching=pack, or
    ragged documents (models.batching.Ragged) for pad. Every step appends a line to
    ``metrics_path``. A non-finite loss stops the run with a TrainingError; the last good
    checkpoint stays in place.

    Under torch.distributed (``parallel`` from :func:`models.distributed.init_parallel`) every rank
    calls this: each trains on its slice of the same global batch, the logged loss is the mean over
    ranks, and only rank 0 writes the metrics and checkpoints, which keep the single-process format.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    parallel = parallel or Parallel()
    device = resolve_device(cfg.device)
    autocast = ForwardContext(device, resolve_precision(cfg.precision, device), cfg.cpu_matmul)
    try:
        with fused_head(model, fuses_loss(cfg, device, autocast.precision, parallel.sharded), autocast.onednn) as head:
            return _train(model, train_data, val_data, cfg, checkpointer, metrics_path, on_metrics, parallel,
                          autocast, head)
    finally:
        torch.set_num_threads(threads)


def _train(model, train_data, val_data, cfg, checkpointer, metrics_path, on_metrics, parallel: Parallel,
           autocast: ForwardContext, head: Optional[FusedHead]) -> TrainOutcome:
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
        log.info("fp32 linear layers run through oneDNN (train.cpu_matmul=%s; see models.kernels)", cfg.cpu_matmul)
    if head is not None:
        log.info("the LM head and the loss run fused, without (batch, tokens, vocab) logits (train.fused_loss)")

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
            if cfg.max_minutes and state.elapsed_s >= cfg.max_minutes * 60:
                log.info("time budget of %.1f min spent at step %d", cfg.max_minutes, state.step)
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, state.step, state.elapsed_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_value, tokens = _forward_backward(step_model, sampler, state, cfg, device, autocast, scaler, parallel, head)
            loss_value = parallel.mean(loss_value)
            if not math.isfinite(loss_value):
                raise _diverged("loss", loss_value, state, cfg, precision, checkpointer)
            grad_norm = _unscale_and_clip(wrapped, optimizer, scaler, cfg)
            # a finite loss can still give inf/NaN gradients: stepping on them would poison the weights
            # (and the next checkpoint); under fp16 the scaler skips such a step and lowers its scale
            if not scaler.is_enabled() and not math.isfinite(grad_norm):
                raise _diverged("the gradient norm", grad_norm, state, cfg, precision, checkpointer)
            skipped = _optimizer_step(optimizer, scaler)
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
                            model_flops * tokens / dt / peak if peak else None)
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


def _forward_backward(model, sampler: Sampler, state: TrainerState, cfg: TrainConfig, device: torch.device,
                      autocast, scaler: torch.amp.GradScaler, parallel: Parallel,
                      head: Optional[FusedHead]) -> tuple[float, int]:
    """Accumulate gradients over ``grad_accum_steps`` micro-batches; return (this rank's step loss, real tokens of the global batch).

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
                loss = micro_loss(model, batch, cfg.grad_accum_steps, window_targets, head)
            scaler.scale(loss).backward()
        total += loss.detach().float()
    return total.item(), sum(b.tokens for b in micro)  # one host sync per step, not per micro-batch


def _unscale_and_clip(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      cfg: TrainConfig) -> float:
    """The gradient norm before clipping. Gradients are unscaled first so the threshold applies to true gradients."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, already reduced over ranks
        grad_norm = grad_norm.full_tensor()
    return float(grad_norm)


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Step and zero; return whether the scaler skipped the update.

    With fp16, inf/NaN gradients (a loss scale too high) make ``scaler.step`` skip the update and
    ``scaler.update`` lower the scale: a normal event early in training, logged, not an error.
    """
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return scale is not None and scaler.get_scale() < scale


def _diverged(what: str, value: float, state: TrainerState, cfg: TrainConfig, precision: str,
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
