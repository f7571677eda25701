"""Kernels and precision chosen by measurement: a few real training steps per candidate on the run's own shapes and
batch, the fastest that computes what fp32 computes (by a margin over the default), cached per machine and per run.

A vendor or instruction-set rule guesses, and guesses wrong across one CPU family (on one AMD EPYC bf16 autocast
is slower than fp32, on the next, with AVX512-BF16, it is faster). So ``train.precision=auto`` and
``train.cpu_matmul=auto`` time each candidate the hardware offers: fp32 with ATen's BLAS, fp32 with oneDNN linear
layers, bf16 autocast where the CPU computes bf16 natively; on CUDA, bf16 (fp16 without it), with and without
torch.compile. Each trains the same steps from the same weights on the same batches as fp32 with ATen (the
reference); one whose loss strays from the reference's is rejected.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from llmops.infra.config import TrainConfig
from llmops.infra.store import ArtifactStore
from llmops.models.data.packing import TokenData
from llmops.models.model.kernels import onednn_available, use_onednn
from llmops.models.model.lora import base_model
from llmops.models.records import KernelChoice, KernelTiming
from llmops.models.training.batching import make_sampler
from llmops.models.training.checkpoint import TrainerState, TrainingError
from llmops.models.training.distributed import Parallel
from llmops.models.training.fused_loss import fused_head, fuses_loss
from llmops.models.training.optim import make_optimizer
from llmops.models.training.precision import (
    ForwardContext,
    cpu_flags,
    cpu_model,
    cpu_native_bf16,
    resolve_compile,
    resolve_precision,
)
from llmops.models.training.setup import prepare_model
from llmops.models.training.steps import forward_backward, optimizer_step, unscale_and_clip

log = logging.getLogger("llmops.calibration")

STEPS = 3  # timed optimizer steps per candidate, after one untimed warm-up step
TOLERANCE = 0.01  # relative: a candidate's loss after the steps must be within 1% of the reference's
# a setting replaces the default only when it is this much faster: on a shared VM a few steps move by several
# percent, and a 3% win measured that way is noise (measured: oneDNN "1.03x" in calibration, 0.97x paired)
MARGIN = 0.05
RUN_FILE = "calibration.json"  # in the run's folder: a resumed run and every rank read the decision there


@dataclass(frozen=True)
class Kernels:
    precision: str
    cpu_matmul: str
    compile: bool

    @property
    def label(self) -> str:
        name = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.precision]
        if self.precision == "fp32" and self.cpu_matmul == "onednn":
            name += " + oneDNN linear layers"
        elif self.precision == "fp32":
            name += " + ATen matmuls"
        return name + (" + torch.compile" if self.compile else "")


REFERENCE = Kernels("fp32", "aten", False)


def options(cfg: TrainConfig, device: torch.device) -> list[Kernels]:
    """The settings ``cfg`` allows on ``device``, in a fixed order; an explicit setting narrows them to itself."""
    if cfg.precision != "auto":
        precisions = [cfg.precision]  # validated where it is used (models/training/precision.py)
    elif device.type == "cuda":
        precisions = ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    else:
        precisions = ["fp32", *(["bf16"] if cpu_native_bf16() else [])]
    if cfg.compile == "auto":  # on CPU, compile pays ~1.1x for a cold compile of 30-60 s: not a candidate
        compiles = [False, True] if device.type == "cuda" else [False]
    else:
        compiles = [bool(cfg.compile)]
    found = []
    for precision in precisions:
        matmuls = ["aten"]  # autocast and GPUs keep their own kernels
        if precision == "fp32" and device.type == "cpu" and cfg.cpu_matmul != "auto":
            matmuls = [cfg.cpu_matmul]
        elif precision == "fp32" and device.type == "cpu":
            matmuls = ["aten", *(["onednn"] if onednn_available() else [])]
        found += [Kernels(precision, m, c) for m in matmuls for c in compiles]
    return found


def static_default(cfg: TrainConfig, device: torch.device) -> Kernels:
    """What ``auto`` means without a measurement: bf16 (fp16) on CUDA, fp32 on CPU with oneDNN where MKL is slow."""
    precision = resolve_precision(cfg.precision, device)
    onednn = use_onednn(cfg.cpu_matmul, device, precision)
    return Kernels(precision, "onednn" if onednn else "aten", resolve_compile(cfg.compile, device))


def fingerprint(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world_size: int) -> dict:
    """What a measurement depends on: the machine, the torch build and threads, the model's shapes, the batch."""
    config = base_model(model).config
    shape = {k: getattr(config, k, None) for k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "n_embd", "n_layer", "n_head", "n_inner", "tie_word_embeddings")}
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else {"cpu": cpu_model(), "flags": sorted(cpu_flags())})
    return {
        "machine": machine, "torch": torch.__version__, "threads": torch.get_num_threads(), "shape": shape,
        "parameters": sum(p.numel() for p in model.parameters()), "batch": cfg.batch_size // world_size,
        "block": cfg.block_size, "accum": cfg.grad_accum_steps, "batching": cfg.batching,
        "checkpointing": cfg.gradient_checkpointing, "fused_loss": cfg.fused_loss, "lora": cfg.lora is not None,
    }


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def measure(kernels: Kernels, model: torch.nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device,
            steps: int = STEPS) -> tuple[float, float]:
    """(median step seconds, loss of the last step) of ``steps`` optimizer steps of a copy of ``model`` under
    ``kernels``, after one warm-up step; the same batches and weights for every candidate, the lr held at
    ``train.lr`` (warm-up's tiny steps would hide a kernel that computes wrong gradients)."""
    work = copy.deepcopy(model)
    run_cfg = cfg.model_copy(update={"precision": kernels.precision, "cpu_matmul": kernels.cpu_matmul})
    autocast = ForwardContext(device, kernels.precision, kernels.cpu_matmul)
    prepare_model(work, run_cfg, device, autocast.onednn)
    optimizer = make_optimizer(work, run_cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=kernels.precision == "fp16")
    sampler, state, times, loss = make_sampler(data, cfg.batching, cfg.batch_size, cfg.seed), TrainerState(), [], 0.0
    step_model = torch.compile(work) if kernels.compile else work
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            fused_head(work, fuses_loss(run_cfg, device, kernels.precision, False), autocast.onednn) as head:
        torch.manual_seed(cfg.seed)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            loss, _ = forward_backward(step_model, sampler, state, run_cfg, device, autocast, scaler, Parallel(), head)
            unscale_and_clip(work, optimizer, scaler, run_cfg)
            optimizer_step(optimizer, scaler)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), loss


def calibrate(model: torch.nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device,
              fingerprint_key: str, steps: int = STEPS) -> KernelChoice:
    """Time the reference and every option, reject those whose loss strays from the reference's, choose the
    fastest left unless the default is within ``MARGIN`` of it; a :class:`TrainingError` when none is left."""
    allowed = options(cfg, device)
    timings: list[KernelTiming] = []
    for kernels in [REFERENCE, *(k for k in allowed if k != REFERENCE)]:
        step_s, loss = measure(kernels, model, data, cfg, device, steps)
        passed = not timings or abs(loss - timings[0].loss) <= TOLERANCE * abs(timings[0].loss)
        timings.append(KernelTiming(setting=kernels.label, precision=kernels.precision, cpu_matmul=kernels.cpu_matmul,
                                    compile=kernels.compile, step_s=step_s, loss=loss, passed=passed,
                                    candidate=kernels in allowed))
    passing = [t for t in timings if t.candidate and t.passed]
    rejected = [t.setting for t in timings if t.candidate and not t.passed]
    if not passing:
        raise TrainingError(f"no setting train.precision={cfg.precision} and train.cpu_matmul={cfg.cpu_matmul} allow "
                            f"reached fp32's loss within {TOLERANCE:.0%} ({', '.join(rejected)}): set "
                            "train.precision=fp32 and train.cpu_matmul=aten")
    best = min(passing, key=lambda t: t.step_s)
    reason = (f"{best.setting}: {timings[0].step_s / best.step_s:.2f}x the speed of fp32 + ATen matmuls over "
              f"{steps} steps of this run's shapes")
    default = static_default(cfg, device).label
    kept = next((t for t in passing if t.setting == default), None)
    if kept is not None and kept is not best and best.step_s * (1 + MARGIN) > kept.step_s:
        reason = (f"{kept.setting} (the default): {timings[0].step_s / kept.step_s:.2f}x the speed of fp32 + ATen "
                  f"matmuls over {steps} steps of this run's shapes; {best.setting} was "
                  f"{kept.step_s / best.step_s:.2f}x faster, within the {MARGIN:.0%} that so few steps cannot tell "
                  "from noise")
        best = kept
    if rejected:
        reason += f"; rejected, loss off fp32's: {', '.join(rejected)}"
    chosen = Kernels(best.precision, best.cpu_matmul, best.compile)
    return _choice(chosen, "calibrated", reason, fingerprint_key, timings)


def with_kernels(cfg: TrainConfig, choice: KernelChoice) -> TrainConfig:
    """``cfg`` with the chosen precision and kernels set explicitly, as the training loop reads them."""
    return cfg.model_copy(update={"precision": choice.precision, "cpu_matmul": choice.cpu_matmul,
                                  "compile": choice.compile})


def _choice(kernels: Kernels, source: str, reason: str, key: str, timings: list[KernelTiming] = ()) -> KernelChoice:
    return KernelChoice(precision=kernels.precision, cpu_matmul=kernels.cpu_matmul, compile=kernels.compile,
                        label=kernels.label, source=source, reason=reason, fingerprint=key, timings=list(timings))


def choose_kernels(model: torch.nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device, *,
                   store: Optional[ArtifactStore], run_prefix: Optional[str], cache_dir: Optional[Path],
                   step_s: Optional[float], parallel: Optional[Parallel] = None) -> KernelChoice:
    """The kernels this run trains with, decided once and then read back by every process of the run.

    In order: explicit settings (nothing to choose); the run's own decision (``runs/<id>/calibration.json``: a
    resumed run, every rank); this machine's decision for the same fingerprint (``<cache>/calibration/``: a
    second run pays nothing); a calibration when it costs at most ``train.calibration_share`` of the run's
    expected duration (``step_s`` is preflight's measured step, ``None`` when not measured); else the static
    default. Rank 0 decides and writes; the other ranks wait at a barrier and read.
    """
    parallel = parallel or Parallel()
    allowed = options(cfg, device)
    key = _key(fingerprint(model, cfg, device, parallel.world_size))
    if len(allowed) == 1:
        return _choice(allowed[0], "explicit", f"{allowed[0].label}: the one setting train.precision={cfg.precision}, "
                       f"cpu_matmul={cfg.cpu_matmul}, compile={cfg.compile} leave on this device", key)
    run_key = f"{run_prefix}/{RUN_FILE}" if store is not None and run_prefix else None
    if parallel.is_main:
        choice = _read(store, run_key)
        if choice is None:
            choice = _machine_cache(cache_dir, key) or _decide(model, data, cfg, device, key, step_s, parallel)
            if choice.source == "calibrated" and cache_dir is not None:
                _write_machine_cache(cache_dir, key, choice)
            if run_key:
                store.put_json(run_key, choice.model_dump(mode="json"))
        else:
            choice = choice.model_copy(update={"source": "run"})
    parallel.barrier()  # rank 0 has written the run's decision
    if not parallel.is_main:
        choice = _read(store, run_key)
        if choice is None:
            raise RuntimeError(f"rank {parallel.rank}: rank 0 wrote no {run_key}")
        choice = choice.model_copy(update={"source": "run"})
    return choice


def _decide(model: torch.nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device, key: str,
            step_s: Optional[float], parallel: Parallel) -> KernelChoice:
    """Calibrate, unless it would cost more than its share of the run, the run's step was not timed, or the model
    is sharded (FSDP: no rank holds a model to time on its own)."""
    default = static_default(cfg, device)
    runs = len(options(cfg, device)) + (REFERENCE not in options(cfg, device))
    cost = expected = None
    if step_s is not None:  # preflight timed forward + backward of a micro-batch; the optimizer adds a little
        step = step_s * cfg.grad_accum_steps * 1.3
        cost, expected = runs * (STEPS + 1) * step, cfg.max_steps * step
        expected = min(expected, cfg.budget_s) if cfg.budget_s else expected
    if parallel.sharded:
        why = "not calibrated under FSDP"
    elif cost is None:
        why = "not calibrated: the run's step was not timed (train.preflight_steps=0)"
    elif cost > cfg.calibration_share * expected:
        why = (f"calibration skipped: ~{cost:.0f} s is over {cfg.calibration_share:.0%} of this run's "
               f"~{expected:.0f} s (train.calibration_share)")
    else:
        t0 = time.perf_counter()
        choice = calibrate(model, data, cfg, device, key)
        log.info("calibrated %d settings in %.1f s", runs, time.perf_counter() - t0)
        return choice
    return _choice(default, "default", f"{default.label}: {why}", key)


def _read(store: Optional[ArtifactStore], key: Optional[str]) -> Optional[KernelChoice]:
    if store is None or key is None or not store.exists(key):
        return None
    return KernelChoice.model_validate(store.get_json(key))


def _machine_file(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "calibration" / f"{key}.json"


def _machine_cache(cache_dir: Optional[Path], key: str) -> Optional[KernelChoice]:
    path = _machine_file(cache_dir, key) if cache_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return KernelChoice.model_validate_json(path.read_text()).model_copy(update={"source": "cached"})
    except ValueError:  # a torn or foreign file: measure again
        return None


def _write_machine_cache(cache_dir: Path, key: str, choice: KernelChoice) -> None:
    path = _machine_file(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(choice.model_dump_json(indent=2))
    tmp.replace(path)
