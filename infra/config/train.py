"""The train section: optimisation, precision and kernels, LoRA, preflight, and scale-out with torch.distributed."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from llmops.infra.config.base import ADDED_LATER, EXECUTION_ONLY, Frozen, pinned


class LoraSettings(Frozen):
    """Low-rank adapters (peft): only the adapters train; the saved model has them merged in."""

    r: int = Field(8, ge=1, description="Rank of each adapter.")
    alpha: int = Field(16, ge=1, description="Scale: the adapter's update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Optional[list[str]] = Field(
        None,
        description="Module names (suffixes) to adapt; default: every linear projection of the attention "
        "and MLP blocks (peft's all-linear, the LM head excluded).",
    )


class DistributedSettings(Frozen):
    """Scale-out over torch.distributed, launched by torchrun; one process per device (or per CPU share).

    ``train.batch_size`` stays the global micro-batch: each optimizer micro-step draws it once and
    every rank trains on its own equal slice, so results do not depend on the number of processes.
    """

    nproc_per_node: int = Field(
        1, ge=1, description="Processes per node (one per GPU); 1 with nnodes=1 trains in-process, undistributed."
    )
    nnodes: int = Field(
        1, ge=1, description="Nodes taking part; more than 1 needs rdzv_endpoint reachable from every node."
    )
    node_rank: int = Field(
        0, ge=0,
        description="This node's rank (0..nnodes-1); used by the static rendezvous, c10d assigns ranks itself.",
    )
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d",
        description="torchrun rendezvous: c10d (a TCP store hosted on the endpoint's node) or static (fixed node "
        "ranks).",
    )
    rdzv_endpoint: Optional[str] = Field(
        None, pattern=r"^[^\s:]+:\d{1,5}$",
        description="host:port every node can reach (e.g. 10.0.0.1:29500); null: torchrun --standalone on a free "
        "local port (one node).",
    )
    rdzv_id: Optional[str] = Field(
        None, description="Rendezvous id shared by the nodes of one job; default: derived from the run id."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Collectives: auto is nccl on CUDA, gloo on CPU."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank holds the whole model and gradients are averaged. fsdp: FSDP2 shards parameters, "
        "gradients and optimizer states over the ranks, per decoder layer (models that do not fit one device).",
    )
    fsdp_cpu_offload: bool = Field(
        False,
        description="fsdp: keep sharded parameters and optimizer states in CPU memory (slow; on a CPU-only host "
        "a no-op, the shards are in host memory already).",
    )
    max_restarts: int = Field(
        0, ge=0,
        description="torchrun restarts of the whole worker group after a failure; each restart resumes from the last "
        "checkpoint.",
    )
    timeout_minutes: float = Field(
        30.0, gt=0, description="How long a collective (or the rendezvous) waits for a missing rank."
    )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @model_validator(mode="after")
    def _check(self) -> DistributedSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint (host:port reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be below nnodes ({self.nnodes})")
        return self


class TrainConfig(Frozen):
    """How the model is trained: AdamW with linear warmup and cosine decay over max_steps or a wall-clock budget,
    precision and kernel choices, checkpoints a rerun resumes from, optional LoRA, a preflight check, and scale-out
    with torch.distributed. The fields that change what is computed enter the run id (models/training/run_id.py);
    execution-only ones (kernels, threads, distributed) do not, so changing them resumes the same run."""

    max_steps: int = Field(
        1000, ge=1,
        description="Optimizer steps at most; the cosine decay spans them. A wall-clock budget (max_minutes, "
        "time_budget_s) may stop training sooner.",
    )
    max_minutes: Optional[float] = Field(
        1.5, gt=0, description="Wall-clock budget; training stops cleanly when it is spent (null: train max_steps)."
    )
    time_budget_s: Annotated[Optional[float], ADDED_LATER] = Field(
        None, gt=0,
        description="Wall-clock budget in seconds, instead of max_minutes when set. With model.preset=auto the model "
        "is sized to it: the shape that reaches the fewest held-out bits in this many seconds on this machine "
        "(models/training/budget.py).",
    )
    batch_size: int = Field(
        16, ge=1,
        description="Sequences per micro-batch, global over distributed ranks (it must divide evenly among them); "
        "also the batch of the validation loss.",
    )
    block_size: int = Field(128, ge=8, description="Tokens per training sequence (the context length).")
    grad_accum_steps: int = Field(
        1, ge=1,
        description="Micro-batches accumulated into one optimizer step: an effective batch of batch_size * "
        "grad_accum_steps sequences at the memory of one micro-batch.",
    )
    lr: float = Field(
        3e-3, gt=0, description="Peak AdamW learning rate, reached after warmup_steps, then cosine decay to "
        "lr * min_lr_ratio."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(50, ge=0, description="Optimizer steps of linear learning-rate warmup to lr.")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW's decoupled weight decay, on weight matrices and embeddings (not norms, biases)."
    )
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW's decay rate of its running mean of gradients.")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW's decay rate of its running mean of squared gradients.")
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm; 0 disables clipping.")
    eval_every: int = Field(
        100, ge=1, description="Optimizer steps between validation-loss estimates (one is also taken at max_steps)."
    )
    eval_batches: int = Field(
        8, ge=1,
        description="Batches of batch_size validation examples per validation-loss estimate (the same first ones "
        "every time).",
    )
    checkpoint_every: int = Field(
        100, ge=1,
        description="Optimizer steps between checkpoints in the store (and one when training ends); a rerun of the "
        "same run id resumes from the latest.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Newest complete checkpoints kept per run; older ones are deleted after each save."
    )
    seed: int = Field(
        1337, description="Seeds the weight initialization, the order of training batches (a permutation per epoch) "
        "and torch's RNG."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where training runs: auto is CUDA when a GPU is visible, else CPU; cuda fails without one."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: measured (train.calibration_share): on CPU fp32, or bf16 autocast where the CPU computes "
        "bf16 natively (AVX512-BF16, AMX) and it is faster; on CUDA bf16 (fp16 without it). Unmeasured: bf16 on CUDA, "
        "fp32 on CPU. bf16 on a CPU without native bf16 runs, slowly; fp16 needs CUDA.",
    )
    compile: Annotated[Union[Literal["auto"], bool], pinned(False)] = Field(
        "auto",
        description="torch.compile the model. auto: on CUDA, where it pays off (fused kernels, fewer launches); off "
        "on CPU, where it gives about 1.1x for a cold compile of ~30 s per process "
        "(bench/results/training_throughput_compile.md).",
    )
    cpu_matmul: Annotated[Literal["auto", "aten", "onednn"], EXECUTION_ONLY] = Field(
        "auto",
        description="fp32 linear layers on CPU: onednn runs them through oneDNN (about 2x MKL's sgemm on AMD CPUs "
        "with AVX-512, where MKL takes its AVX2 path); aten keeps torch's default BLAS; auto times both on the run's "
        "own shapes (train.calibration_share), or, unmeasured, picks onednn on non-Intel CPUs with AVX-512 and MKL "
        "(llmops.models.model.kernels).",
    )
    calibration_share: Annotated[float, EXECUTION_ONLY] = Field(
        0.05, ge=0, le=1,
        description="precision and cpu_matmul auto are decided by timing a few steps of each candidate on the run's "
        "own shapes (cached per machine); the calibration may cost at most this share of the run's expected duration, "
        "else the static rule decides (0: never calibrate; 1: always).",
    )
    fused_loss: Annotated[bool, EXECUTION_ONLY] = Field(
        True,
        description="Run the LM head and the cross-entropy together, chunk by chunk, so no (batch, tokens, vocab) "
        "logits are held: less memory and memory traffic (fp32 on CPU, not with distributed.strategy=fsdp; "
        "llmops.models.training.fused_loss). Same loss and gradients to fp32 rounding.",
    )
    fused_adamw: Annotated[bool, EXECUTION_ONLY] = Field(
        True, description="Use the fused AdamW kernel where this torch supports it (falls back otherwise)."
    )
    gradient_checkpointing: Annotated[bool, EXECUTION_ONLY] = Field(
        False,
        description="Recompute each layer's activations in the backward pass: activation memory of about one "
        "layer instead of all, for about a third more compute.",
    )
    batching: Annotated[Literal["pack", "pad"], ADDED_LATER] = Field(
        "pack",
        description="pack: documents concatenated with eos and cut into full blocks (pretraining). pad: each "
        "document one example truncated to block_size, batches of similar length padded to their longest "
        "(fine-tuning on variable-length examples). pack stays the default for fine-tuning too: pad drops "
        "what runs past block_size, which loses most of a corpus of long documents.",
    )
    lora: Annotated[Optional[LoraSettings], ADDED_LATER] = Field(
        None, description="Train low-rank adapters instead of every weight (fine-tuning); merged into the saved model."
    )
    preflight: Annotated[Literal["enforce", "warn"], EXECUTION_ONLY] = Field(
        "enforce",
        description="enforce: a run whose memory estimate exceeds 90% of the free device memory fails before "
        "training, saying what to change; warn: log it and try anyway.",
    )
    preflight_steps: Annotated[int, EXECUTION_ONLY] = Field(
        2, ge=0, description="Forward+backward passes timed before training to estimate its duration (0: skip)."
    )
    peak_tflops: Annotated[Optional[float], EXECUTION_ONLY] = Field(
        None, gt=0, description="Peak dense TFLOP/s of one device at the run's precision, for the MFU in the metrics; "
        "default: looked up for known GPUs in bf16/fp16 (llmops.models.training.preflight.PEAK_TFLOPS), none on CPU.",
    )
    num_threads: Annotated[Optional[int], EXECUTION_ONLY] = Field(
        None, ge=1, description="torch CPU threads; default: torch's choice."
    )
    distributed: Annotated[DistributedSettings, EXECUTION_ONLY] = Field(
        default_factory=DistributedSettings,
        description="Scale-out with torchrun (DDP or FSDP); batch_size stays the global batch, split across ranks.",
    )

    @property
    def budget_s(self) -> Optional[float]:
        """The wall-clock budget of the training loop in seconds (time_budget_s, else max_minutes), or None."""
        return self.time_budget_s or (self.max_minutes * 60 if self.max_minutes else None)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        d = self.distributed
        if d.enabled and self.batch_size % d.world_size:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch and must divide evenly over "
                             f"distributed.nproc_per_node * distributed.nnodes = {d.world_size} ranks")
        if d.strategy == "fsdp" and self.lora is not None:
            raise ValueError("distributed.strategy=fsdp with lora: only the small adapters train, so there is little "
                             "to shard; use distributed.strategy=ddp")
        if d.backend == "nccl" and self.device == "cpu":
            raise ValueError("distributed.backend=nccl needs CUDA but device=cpu: use backend=gloo (or auto)")
        return self
