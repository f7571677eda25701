"""Preflight: will this run fit, how much compute is it, and how long will it take — before training starts."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from llmops.infra.config import LoraSettings, TrainConfig
from llmops.infra.markdown import markdown_table
from llmops.models.data.packing import TokenData
from llmops.models.model.lora import apply_lora, base_model
from llmops.models.records import PreflightReport
from llmops.models.training.batching import mean_tokens_per_example
from llmops.models.training.fused_loss import chunk_rows, fusable_head, fuses_loss
from llmops.models.training.precision import cpu_flags, native_bf16

GiB = 2**30
RULE_HOLD_BYTES = 4  # bytes/parameter to hold fp32 weights
RULE_TRAIN_EXTRA_BYTES = 20  # the rule of thumb's extra bytes/parameter to train with Adam in fp32
CHINCHILLA_TOKENS_PER_PARAM = 20
USABLE_FRACTION = 0.9  # headroom for the allocator's fragmentation, the CUDA context, the data
MAX_FSDP_RANKS = 1024  # sharding advice looks no further: past this, only a smaller model is advised

__all__ = ["PreflightError", "PreflightReport", "preflight", "with_duration", "check", "skeleton",
           "measure_step_seconds", "summary", "markdown", "peak_flops", "flops_per_token", "PEAK_TFLOPS"]


# Peak dense tensor-core TFLOP/s per device in bf16/fp16 (vendor data sheets, without sparsity), for MFU.
# Matched on torch.cuda.get_device_name(); the first key contained in the name wins, so specific names come first.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "B200": 2250.0,
               "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
               "RTX 4090": 165.2, "RTX 3090": 71.0, "A6000": 154.8, "V100": 125.0, "T4": 65.0}


def peak_flops(device: torch.device, precision: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device for MFU: ``override_tflops`` if given, else the table for a known GPU
    in bf16/fp16; None when unknown (fp32 on a GPU, any CPU), and then no MFU is reported."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def _width_depth(config: PretrainedConfig) -> tuple[int, int]:
    """(hidden size, number of layers) of a Llama-style or GPT-2-style config."""
    return (getattr(config, "hidden_size", None) or config.n_embd,
            getattr(config, "num_hidden_layers", None) or config.n_layer)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM (appendix B) count them: 6·N for the weights'
    matmuls (forward + backward) plus 12·layers·hidden·seq_len for attention scores and values."""
    config = base_model(model).config
    hidden, layers = _width_depth(config)
    n = sum(p.numel() for p in model.parameters())
    return 6.0 * n + 12.0 * layers * hidden * seq_len


class PreflightError(RuntimeError):
    """The configuration cannot run on this device; the message says what to change."""


def skeleton(config: PretrainedConfig, attention: str = "sdpa", lora: Optional[LoraSettings] = None) -> torch.nn.Module:
    """The model on the ``meta`` device: shapes and dtypes without memory, for counting a 1B model in a second."""
    with torch.device("meta"):  # fp32 whatever config.dtype says, as load_pretrained: fp32 master weights
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)
    return apply_lora(model, lora) if lora else model


def available_memory(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or the RAM the OS reports available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def activation_bytes(config: PretrainedConfig, batch_size: int, seq_len: int, precision: str,
                     checkpointing: bool, fused_loss: bool = False) -> int:
    """Peak activations of one micro-batch, from the shape of the model.

    Per layer and token a transformer block keeps about 34·h bytes in 16-bit precision
    (Korthikanti et al. 2022, with memory-efficient attention so no s² term), twice that in fp32;
    with gradient checkpointing only each layer's input (h values) stays, plus one block's full
    set during recomputation. The logits and their gradient (batch·seq·vocab, fp32) come on top
    and often dominate small models with large vocabularies; the fused loss (llmops.models.training.fused_loss)
    holds one chunk of them instead, and the gradients of the hidden states and of the head.
    """
    hidden, layers = _width_depth(config)
    width = 2 if precision in ("bf16", "fp16") else 4
    tokens = batch_size * seq_len
    per_layer = 17 * hidden * width * tokens  # 34·h bytes at 2 bytes/value
    if checkpointing:
        blocks = layers * hidden * width * tokens + per_layer
    else:
        blocks = layers * per_layer
    vocab = config.vocab_size
    if fused_loss:  # a chunk's logits and softmax, grad of the hidden states, the head's grad and its transpose
        logits = (2 * min(tokens, chunk_rows(vocab)) * vocab + tokens * hidden + 2 * vocab * hidden) * 4
    else:
        logits = 3 * tokens * vocab * 4  # logits, log-softmax, gradient
    return int(blocks + logits)


def preflight(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, precision: str,
              train_data: TokenData, step_seconds: Optional[float] = None, pretrained: bool = False) -> PreflightReport:
    """Memory, compute and data arithmetic for this run; ``fits`` is False with advice when it cannot run.

    Args:
        model: The model as it will train (a LoRA wrapper counts only adapters as trainable); a
            ``meta``-device :func:`skeleton` gives the same numbers without allocating anything.
        device: Where it will train; its free memory is the budget.
        precision: The resolved precision (fp32, bf16, fp16): activations are 16-bit under autocast,
            weights, gradients and AdamW's two moments stay fp32 (4 + 4 + 8 bytes per trainable parameter).
        train_data: The training split (blocks or ragged documents): tokens available, tokens per step.
        step_seconds: A measured forward+backward of one micro-batch, for the duration estimate.
        pretrained: The weights start from a pretrained model (model.pretrained): only then is LoRA advised.

    Under ``train.distributed`` the memory is one rank's: activations of its slice of the global
    batch, and with FSDP its shard of the weights, gradients and optimizer states (the full weights
    of one layer are gathered at a time on top, left out); with ``fsdp_cpu_offload`` on a GPU the
    shards are in host RAM and the device total is the activations. The processes of a CPU node share its RAM,
    so there the estimate is multiplied by ``nproc_per_node``. Tokens per step stay global.
    """
    dist, ranks = cfg.distributed, cfg.distributed.world_size
    params = list(model.parameters())  # unique tensors: tied embeddings count once
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    config, fusable = base_model(model).config, fusable_head(model) is not None

    def per_rank(world: int, fsdp: bool, precision: str = precision) -> tuple[int, int, int, int]:
        """One rank's weights, fp32 gradients, AdamW's two fp32 moments and activations over ``world`` ranks."""
        shards = world if fsdp and world > 1 else 1
        acts = activation_bytes(config, max(1, -(-cfg.batch_size // world)), cfg.block_size, precision,
                                cfg.gradient_checkpointing, fusable and fuses_loss(cfg, device, precision, shards > 1))
        return weight_bytes // shards, trainable * 4 // shards, trainable * 8 // shards, acts

    weights, grads, optimizer, acts = per_rank(ranks, dist.strategy == "fsdp")
    per_node = dist.nproc_per_node if device.type != "cuda" else 1
    # offloaded FSDP shards (and the optimizer step) live in host RAM: the GPU holds the activations
    total = acts if _offloaded(cfg, device) else (weights + grads + optimizer + acts) * per_node
    available = available_memory(device)
    tokens_per_step = int(round(cfg.batch_size * cfg.grad_accum_steps * mean_tokens_per_example(train_data)))
    fits = total <= USABLE_FRACTION * available
    report = PreflightReport(
        device=str(device), precision=precision, parameters=n, trainable_parameters=trainable,
        weights_bytes=weights, gradients_bytes=grads, optimizer_bytes=optimizer, activations_bytes=acts,
        total_bytes=total, available_bytes=available, rule_of_thumb_hold_bytes=RULE_HOLD_BYTES * n,
        rule_of_thumb_train_bytes=(RULE_HOLD_BYTES + RULE_TRAIN_EXTRA_BYTES) * n, tokens_per_step=tokens_per_step,
        planned_tokens=tokens_per_step * cfg.max_steps, available_tokens=int(train_data.size),
        chinchilla_tokens=CHINCHILLA_TOKENS_PER_PARAM * n, training_flops=6.0 * n * tokens_per_step * cfg.max_steps,
        fits=fits,
        advice=[] if fits else _advice(cfg, device, precision, pretrained, per_rank, per_node, total, available),
    )
    return with_duration(report, cfg, step_seconds) if step_seconds is not None else report


def with_duration(report: PreflightReport, cfg: TrainConfig, step_seconds: float) -> PreflightReport:
    """The report with a duration estimated from one measured micro-batch (the budget caps it)."""
    per_step = step_seconds * cfg.grad_accum_steps * 1.1  # the optimizer step adds ~10% at these sizes
    duration, planned = per_step * cfg.max_steps, report.planned_tokens
    if cfg.budget_s and duration > cfg.budget_s:
        duration = cfg.budget_s
        planned = int(duration / per_step) * report.tokens_per_step
    return report.model_copy(update={
        "measured_step_s": step_seconds, "estimated_duration_s": duration, "planned_tokens": planned,
        "training_flops": 6.0 * report.parameters * planned,
    })


def _advice(cfg: TrainConfig, device: torch.device, precision: str, pretrained: bool,
            per_rank: Callable[..., tuple[int, int, int, int]], per_node: int, total: int, available: int) -> list[str]:
    """What to change; ``per_rank(world, fsdp[, precision])`` gives one rank's bytes as :func:`preflight` counts
    them."""
    dist, ranks, usable = cfg.distributed, cfg.distributed.world_size, USABLE_FRACTION * available
    fsdp = dist.strategy == "fsdp"
    weights, grads, optimizer, acts = per_rank(ranks, fsdp)
    tips = []
    per_rank_batch = cfg.batch_size // ranks
    if per_rank_batch > 1:  # the smallest factor that keeps the global batch a multiple of the ranks
        factor = next(f for f in range(2, per_rank_batch + 1) if per_rank_batch % f == 0)
        tips.append(f"set train.batch_size to {cfg.batch_size // factor} and train.grad_accum_steps to "
                    f"{cfg.grad_accum_steps * factor} (same effective batch, about "
                    f"{acts * (1 - 1 / factor) * per_node / GiB:.2f} GiB less activation memory)")
    if not cfg.gradient_checkpointing:
        tips.append("set train.gradient_checkpointing=true (recompute activations in the backward pass)")
    if precision == "fp32":
        saved = (acts - per_rank(ranks, fsdp, "bf16")[3]) * per_node  # more, not less, where it loses the fused loss
        if saved > 0 and saved >= 0.1 * (total - usable):  # worth it when it covers a tenth of what is missing
            tips.append(f"set train.precision=bf16 (about {saved / GiB:.2f} GiB less activation memory"
                        f"{_cpu_bf16_caveat() if device.type == 'cpu' else ''})")
    if pretrained and cfg.lora is None:  # from scratch, LoRA would train only adapters on random weights
        tips.append(f"fine-tune with LoRA (train.lora{', with train.distributed.strategy=ddp' if fsdp else ''}) "
                    "so gradients and optimizer states cover only the adapters")
    state = (weights + grads + optimizer) * per_node
    if state > usable and not _offloaded(cfg, device):  # offloaded, the state is in host RAM already
        # one rank per GPU, or per CPU node (a node's processes share its RAM); fsdp does not take train.lora
        world = None if cfg.lora else next(
            (w for w in range(2, MAX_FSDP_RANKS + 1) if sum(per_rank(w, True)) <= usable), None)
        if world is None:
            tips.append(f"the weights, gradients and optimizer states alone take {state / GiB:.2f} GiB: "
                        "only a smaller model fits")
        else:
            batch = f", train.batch_size={-(-cfg.batch_size // world) * world}" if cfg.batch_size % world else ""
            where = (f"{world} GPUs (train.distributed.nproc_per_node * train.distributed.nnodes = {world}{batch})"
                     if device.type == "cuda" else
                     f"{world} nodes (train.distributed.nnodes={world}, train.distributed.nproc_per_node=1{batch})")
            offload = ("; on fewer GPUs add train.distributed.fsdp_cpu_offload=true (shards in CPU RAM, slower)"
                       if device.type == "cuda" and not dist.fsdp_cpu_offload else "")
            tips.append(f"shard the weights, gradients and optimizer states ({state / GiB:.2f} GiB) with "
                        f"train.distributed.strategy=fsdp over {where}{offload}")
    tips.append(f"or use a smaller model.preset: this one needs {total / GiB:.2f} GiB, "
                f"{available / GiB:.2f} GiB is available")
    return tips


def _offloaded(cfg: TrainConfig, device: torch.device) -> bool:
    dist = cfg.distributed
    return device.type == "cuda" and dist.strategy == "fsdp" and dist.world_size > 1 and dist.fsdp_cpu_offload


def _native_cpu_bf16() -> Optional[bool]:
    return native_bf16(cpu_flags())


def _cpu_bf16_caveat() -> str:
    native = _native_cpu_bf16()
    if native:
        return ""
    if native is None:
        return "; slower than fp32 on CPUs without native bf16 (AVX512-BF16, AMX)"
    return "; slower than fp32 on this CPU, which lacks native bf16"


def check(report: PreflightReport) -> None:
    """Raise :class:`PreflightError`, naming what to change, when the run does not fit."""
    if not report.fits:
        raise PreflightError(
            f"this run needs about {report.total_bytes / GiB:.2f} GiB on {report.device} but "
            f"{report.available_bytes / GiB:.2f} GiB is available (weights {report.weights_bytes / GiB:.2f}, "
            f"gradients {report.gradients_bytes / GiB:.2f}, optimizer {report.optimizer_bytes / GiB:.2f}, "
            f"activations {report.activations_bytes / GiB:.2f} GiB). Try: " + "; ".join(report.advice)
        )


def measure_step_seconds(step: Callable[[], None], device: torch.device, steps: int = 2) -> float:
    """Median time of ``step`` (one forward + backward, or any call on ``device``) after a warm-up call
    (allocations, kernel selection)."""
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def summary(report: PreflightReport) -> str:
    """One line for the logs."""
    est = f"{report.estimated_duration_s / 60:.1f} min" if report.estimated_duration_s else "not measured"
    return (f"{report.parameters / 1e6:.2f} M parameters ({report.trainable_parameters / 1e6:.2f} M trainable); "
            f"memory {report.total_bytes / GiB:.2f} GiB of {report.available_bytes / GiB:.1f} GiB available on "
            f"{report.device} ({report.precision}); rule of thumb {report.rule_of_thumb_train_bytes / GiB:.2f} GiB; "
            f"{report.planned_tokens:,} tokens planned "
            f"({report.planned_tokens / max(1, report.available_tokens):.1f} epochs, "
            f"Chinchilla-optimal {report.chinchilla_tokens:,}); {report.training_flops:.2e} FLOPs; estimated {est}")


def markdown(report: PreflightReport, actual_s: Optional[float] = None) -> str:
    """The report as a two-column markdown table (model card, Prefect artifact)."""
    gib = lambda b: f"{b / GiB:.3f} GiB"  # noqa: E731
    est = f"{report.estimated_duration_s:.1f} s" if report.estimated_duration_s is not None else "not measured"
    rows = [
        ["parameters", f"{report.parameters:,} ({report.trainable_parameters:,} trainable)"],
        ["memory estimate", f"{gib(report.total_bytes)} on {report.device} ({report.precision}): weights "
                            f"{gib(report.weights_bytes)}, gradients {gib(report.gradients_bytes)}, optimizer "
                            f"{gib(report.optimizer_bytes)}, activations {gib(report.activations_bytes)}"],
        ["memory available", gib(report.available_bytes)],
        ["rule of thumb (fp32, Adam)", f"hold {gib(report.rule_of_thumb_hold_bytes)} (4 B/parameter), train "
                                       f"{gib(report.rule_of_thumb_train_bytes)} (4 + 20 B/parameter)"],
        ["training FLOPs (6·N·D)", f"{report.training_flops:.3e}"],
        ["tokens planned / available", f"{report.planned_tokens:,} / {report.available_tokens:,} "
                                       f"({report.planned_tokens / max(1, report.available_tokens):.2f} epochs)"],
        ["Chinchilla-optimal tokens (20/parameter)", f"{report.chinchilla_tokens:,}"],
        ["duration estimated" + (" / actual" if actual_s is not None else ""),
         est + (f" / {actual_s:.1f} s" if actual_s is not None else "")],
    ]
    return markdown_table(["preflight", "value"], rows)
