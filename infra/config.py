"""The one typed pipeline configuration: nested frozen pydantic models with defaults that work, YAML-loadable."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(Frozen):
    """Where the text comes from and how it is validated and split."""

    dataset_name: str = Field("corpus", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sources: list[str] = Field(
        default_factory=lambda: ["builtin://stdlib-docstrings", "traffic://"],
        description=(
            "Files, folders, globs (.txt/.md/.jsonl/.parquet), s3://bucket/prefix, a `datasets` dataset "
            "saved to disk, builtin://stdlib-docstrings or builtin://stdlib-code (text every Python "
            "install has), and traffic:// (prompts this model served, from the store)."
        ),
    )
    text_field: str = Field("text", description="The field holding the text in JSONL/Parquet/datasets records.")
    min_chars: int = Field(32, ge=1, description="Shorter records are quarantined as too short.")
    max_chars: int = Field(20_000, ge=1, description="Longer records are quarantined as too long.")
    max_records_per_source: Optional[int] = Field(None, ge=1, description="Read at most this many records from each source.")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_fraction: float = Field(0.05, gt=0, lt=0.5)
    split_seed: int = Field(0, description="Salt of the hash that assigns a record to a split.")
    traffic_days: int = Field(30, ge=1, description="How far back traffic:// reads captured prompts.")
    chunk_chars: int = Field(
        2000, ge=1,
        description="Plain-text files (.txt/.md) are cut into records of at most this many characters, "
        "at blank lines first, then at line ends.",
    )

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        if not self.sources:
            raise ValueError("sources is empty: name at least one file, folder, s3:// prefix or builtin:// corpus")
        return self


class TokenizerConfig(Frozen):
    kind: Literal["bpe", "pretrained"] = Field(
        "bpe",
        description="Train a byte-level BPE, or attach an existing tokenizer. With model.pretrained set, bpe "
        "means the pretrained model's own tokenizer.",
    )
    vocab_size: int = Field(4096, ge=260, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    path: Optional[str] = Field(None, description="Local path or hub id of a tokenizer to attach (kind=pretrained).")
    num_proc: int = Field(1, ge=1, description="Processes for datasets.map when packing.")

    @model_validator(mode="after")
    def _check(self) -> "TokenizerConfig":
        if self.kind == "pretrained" and not self.path:
            raise ValueError("tokenizer.kind=pretrained needs tokenizer.path")
        return self


# The names of models.presets.PRESETS (a test keeps the two equal): checked when the config loads,
# not after ingest and tokenization have run.
PresetName = Literal["tiny", "mini", "small", "gpt2-124m", "gpt2", "llama-1b"]


class ModelConfig(Frozen):
    preset: PresetName = Field(
        "mini",
        description="A preset from models/presets.py: tiny (tests), mini and small (CPU), gpt2-124m and gpt2 "
        "(GPT-2-124M class), llama-1b; ignored when `pretrained` is set.",
    )
    overrides: dict[str, Union[int, float, str, bool]] = Field(
        default_factory=dict, description="Fields of the transformers config to override, e.g. {num_hidden_layers: 2}."
    )
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa",
        description="Attention kernel: PyTorch scaled_dot_product_attention (flash/memory-efficient on GPU), "
        "or the eager matmul-softmax reference.",
    )
    pretrained: Optional[str] = Field(
        None,
        description="Fine-tune this causal LM instead of training a preset from scratch: a local folder "
        "(save_pretrained layout) or a hub id when online. Its tokenizer is used unless "
        "tokenizer.kind=pretrained names another.",
    )


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

    nproc_per_node: int = Field(1, ge=1, description="Processes per node (one per GPU); 1 with nnodes=1 trains in-process, undistributed.")
    nnodes: int = Field(1, ge=1, description="Nodes taking part; more than 1 needs rdzv_endpoint reachable from every node.")
    node_rank: int = Field(0, ge=0, description="This node's rank (0..nnodes-1); used by the static rendezvous, c10d assigns ranks itself.")
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d", description="torchrun rendezvous: c10d (a TCP store hosted on the endpoint's node) or static (fixed node ranks)."
    )
    rdzv_endpoint: Optional[str] = Field(
        None, pattern=r"^[^\s:]+:\d{1,5}$",
        description="host:port every node can reach (e.g. 10.0.0.1:29500); null: torchrun --standalone on a free local port (one node).",
    )
    rdzv_id: Optional[str] = Field(None, description="Rendezvous id shared by the nodes of one job; default: derived from the run id.")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Collectives: auto is nccl on CUDA, gloo on CPU.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank holds the whole model and gradients are averaged. fsdp: FSDP2 shards parameters, "
        "gradients and optimizer states over the ranks, per decoder layer (models that do not fit one device).",
    )
    fsdp_cpu_offload: bool = Field(False, description="fsdp: keep sharded parameters and optimizer states in CPU memory (slow; on a CPU-only host "
                                   "a no-op, the shards are in host memory already).")
    max_restarts: int = Field(
        0, ge=0, description="torchrun restarts of the whole worker group after a failure; each restart resumes from the last checkpoint."
    )
    timeout_minutes: float = Field(30.0, gt=0, description="How long a collective (or the rendezvous) waits for a missing rank.")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @model_validator(mode="after")
    def _check(self) -> "DistributedSettings":
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint (host:port reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be below nnodes ({self.nnodes})")
        return self


class TrainConfig(Frozen):
    max_steps: int = Field(1000, ge=1)
    max_minutes: Optional[float] = Field(
        1.5, gt=0, description="Wall-clock budget; training stops cleanly when it is spent (null: train max_steps)."
    )
    batch_size: int = Field(16, ge=1)
    block_size: int = Field(128, ge=8, description="Tokens per training sequence (the context length).")
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm; 0 disables clipping.")
    eval_every: int = Field(100, ge=1)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU.")
    compile: Union[Literal["auto"], bool] = Field(
        "auto",
        description="torch.compile the model. auto: on CUDA, where it pays off (fused kernels, fewer launches); off "
        "on CPU, where it gives about 1.1x for a cold compile of ~30 s per process "
        "(bench/results/training_throughput_compile.md).",
    )
    cpu_matmul: Literal["auto", "aten", "onednn"] = Field(
        "auto",
        description="fp32 linear layers on CPU: onednn runs them through oneDNN (about 2x MKL's sgemm on AMD CPUs "
        "with AVX-512, where MKL takes its AVX2 path); aten keeps torch's default BLAS; auto picks onednn on "
        "non-Intel CPUs with AVX-512 and MKL, aten elsewhere (models.kernels).",
    )
    fused_loss: bool = Field(
        True,
        description="Run the LM head and the cross-entropy together, chunk by chunk, so no (batch, tokens, vocab) "
        "logits are held: less memory and memory traffic (fp32 on CPU, not with distributed.strategy=fsdp; "
        "models.fused_loss). Same loss and gradients to fp32 rounding.",
    )
    fused_adamw: bool = Field(True, description="Use the fused AdamW kernel where this torch supports it (falls back otherwise).")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward pass: activation memory of about one "
        "layer instead of all, for about a third more compute.",
    )
    batching: Literal["pack", "pad"] = Field(
        "pack",
        description="pack: documents concatenated with eos and cut into full blocks (pretraining). pad: each "
        "document one example truncated to block_size, batches of similar length padded to their longest "
        "(fine-tuning on variable-length examples). pack stays the default for fine-tuning too: pad drops "
        "what runs past block_size, which loses most of a corpus of long documents.",
    )
    lora: Optional[LoraSettings] = Field(
        None, description="Train low-rank adapters instead of every weight (fine-tuning); merged into the saved model."
    )
    preflight: Literal["enforce", "warn"] = Field(
        "enforce",
        description="enforce: a run whose memory estimate exceeds 90% of the free device memory fails before "
        "training, saying what to change; warn: log it and try anyway.",
    )
    preflight_steps: int = Field(
        2, ge=0, description="Forward+backward passes timed before training to estimate its duration (0: skip)."
    )
    peak_tflops: Optional[float] = Field(
        None, gt=0, description="Peak dense TFLOP/s of one device at the run's precision, for the MFU in the metrics; "
        "default: looked up for known GPUs in bf16/fp16 (models.preflight.PEAK_TFLOPS), none on CPU.",
    )
    num_threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; default: torch's choice.")
    distributed: DistributedSettings = Field(
        default_factory=DistributedSettings,
        description="Scale-out with torchrun (DDP or FSDP); batch_size stays the global batch, split across ranks.",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
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


class GenerationSettings(Frozen):
    name: str
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


def _default_generations() -> list[GenerationSettings]:
    return [
        GenerationSettings(name="greedy"),
        GenerationSettings(name="temperature-0.8", do_sample=True, temperature=0.8),
        GenerationSettings(name="top-k-40", do_sample=True, top_k=40),
        GenerationSettings(name="top-p-0.9", do_sample=True, top_p=0.9),
    ]


class EvalConfig(Frozen):
    max_docs: Optional[int] = Field(400, ge=1, description="Score at most this many documents per split.")
    stride: Optional[int] = Field(None, ge=1, description="Sliding-window stride for long documents (default: half the context).")
    batch_size: int = Field(16, ge=1)
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["Return the", "This module provides", "If the"],
    )
    max_new_tokens: int = Field(32, ge=1)
    generations: list[GenerationSettings] = Field(default_factory=_default_generations)


class GateConfig(Frozen):
    """Champion/challenger: promote only a candidate that beats production (or, with none, a bound)."""

    max_bits_per_byte: float = Field(3.0, gt=0, description="With no production model: the candidate must score at most this.")
    min_improvement: float = Field(0.0, ge=0, description="Bits per byte the candidate must gain over production.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the paired bootstrap interval.")
    bootstrap_samples: int = Field(1000, ge=100)


class CompressConfig(Frozen):
    quantize: Literal["none", "int8"] = "int8"
    max_bpb_increase: float = Field(0.05, ge=0, description="The int8 variant is marked servable only within this loss.")
    latency_runs: int = Field(5, ge=1)


class ServeConfig(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    alias: str = "production"
    variant: Literal["fp32", "int8"] = "fp32"
    max_prompt_chars: int = Field(8000, ge=1)
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(16, ge=1)
    max_n: int = Field(4, ge=1)
    capture: bool = Field(True, description="Write every request/response with its features to the traffic log.")
    flush_every: int = Field(32, ge=1, description="Flush the traffic buffer after this many records...")
    flush_interval_s: float = Field(2.0, gt=0, description="...or this many seconds.")
    reload_interval_s: float = Field(15.0, ge=0, description="Check the alias this often and load a newly promoted model; 0 disables.")
    max_batch_prompts: int = Field(16, ge=1, description="Most prompts one completion request may send as a list.")
    capture_buffer_limit: int = Field(
        10_000, ge=1,
        description="Most traffic records held in memory while the store cannot be written; the oldest are dropped beyond it.",
    )


class SignalThresholds(Frozen):
    """PSI thresholds for one drift signal, overriding the monitor-wide ones."""

    psi_warn: float = Field(0.1, gt=0)
    psi_alert: float = Field(0.2, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "SignalThresholds":
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) exceeds psi_alert ({self.psi_alert})")
        return self


class MonitorConfig(Frozen):
    window_minutes: int = Field(60, ge=1, description="Length of the traffic window a scheduled run checks.")
    min_samples: int = Field(100, ge=10, description="Below this many requests no verdict is given.")
    reference_size: int = Field(1000, ge=50, description="Validation documents scored into the reference profile.")
    n_bins: int = Field(10, ge=2, description="Quantile bins fixed from the reference for continuous signals.")
    top_k_tokens: int = Field(50, ge=1, description="Token-frequency signal: reference's top-K tokens plus 'other'.")
    psi_warn: float = Field(0.1, gt=0)
    psi_alert: float = Field(0.2, gt=0)
    alpha: float = Field(0.01, gt=0, lt=1, description="Family-wise significance, corrected over the signals tested (see correction).")
    consecutive_windows: int = Field(1, ge=1, description="Alert only after this many drifting windows in a row.")
    cooldown_minutes: float = Field(60.0, ge=0, description="No new drift event this long after the last one.")
    correction: Literal["bonferroni", "holm"] = Field(
        "bonferroni", description="Multiple-testing correction over the signals tested in a window."
    )
    psi_high: float = Field(0.5, gt=0, description="Severity 'high' from this max PSI up (or psi_alert if larger); 'medium' below.")
    report_only_signals: list[str] = Field(
        default_factory=lambda: ["latency_ms"],
        description="Signals computed and reported but never alerting (latency depends on the serving hardware).",
    )
    signal_thresholds: dict[str, SignalThresholds] = Field(
        default_factory=dict, description="Per-signal PSI thresholds, e.g. {token_frequency: {psi_warn: 0.15, psi_alert: 0.3}}."
    )
    smoothing: float = Field(
        0.5, gt=0, description="Pseudo-count added to every bin of both histograms before PSI/KL (0.5: Jeffreys)."
    )
    tail_quantile: float = Field(
        0.01, ge=0, lt=0.1,
        description="Extra bin edges at this reference quantile and 1 minus it (0 disables): mass moving into the tails shows in PSI.",
    )
    psi_debias: bool = Field(
        True, description="Judge PSI minus its expected value under no drift ((bins-1)(1/n_ref+1/n_cur)), so small windows do not warn on noise."
    )
    ks_sample_size: int = Field(5000, ge=100, description="Reference values kept in the profile for the KS test.")
    ks_window_sample: int = Field(
        20_000, ge=100,
        description="Window values kept (uniform reservoir) per signal for the KS test; counts and means use every value.",
    )
    common_token_coverage: float = Field(
        0.95, gt=0, lt=1,
        description="rare_token_share: the common-token set is the fewest ids covering this share of the reference's token occurrences.",
    )
    evidently_report: bool = Field(True, description="Also write Evidently's HTML/JSON drift report for each window.")
    compact_traffic: bool = Field(
        True, description="Before each scheduled check, compact the model's closed traffic hours into Parquet (docs/monitoring.md).",
    )
    compact_grace_minutes: float = Field(
        10.0, gt=0,
        description="An hour is closed, and may be compacted, this long after it ended; must exceed serve.flush_interval_s.",
    )
    compact_lookback_hours: int = Field(
        48, ge=1, description="The scheduled compaction looks at closed hours this far back (`llmops compact` at all of them).",
    )
    compact_delete_jsonl: bool = Field(
        False, description="Delete an hour's JSONL files once the manifest of its compacted Parquet file is committed.",
    )
    semantic_model: Optional[str] = Field(
        None,
        description="Semantic drift (off when null): a sentence encoder loadable by transformers AutoModel/AutoTokenizer "
        "(local path or hub id); adds the semantic_distance signal, paid in one encoder pass per prompt (docs/monitoring.md).",
    )
    semantic_batch_size: int = Field(32, ge=1, description="Prompts per encoder forward pass (semantic_model).")
    semantic_max_length: int = Field(256, ge=8, description="Tokens of a prompt the encoder reads; the rest is cut (semantic_model).")
    semantic_window_sample: int = Field(
        2000, ge=100,
        description="Prompts of a window embedded for semantic_distance, a uniform sample when it has more: the encoder is the cost.",
    )

    @model_validator(mode="after")
    def _check(self) -> "MonitorConfig":
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn ({self.psi_warn}) exceeds psi_alert ({self.psi_alert})")
        return self


class ScheduleConfig(Frozen):
    """When the deployments run by themselves (``llmops deploy`` / ``llmops up``)."""

    retrain_cron: Optional[str] = Field("0 3 * * 0", description="Scheduled retraining, independent of drift (default: Sundays 03:00).")
    monitor_every_minutes: Optional[float] = Field(
        60, gt=0, description="Run the drift check on this interval (fractions allowed: 0.25 is every 15 s); null disables."
    )
    timezone: str = "UTC"
    retrain_delay_minutes: float = Field(
        0.0, ge=0, description="Review window: a drift-triggered retrain is scheduled this long after the event."
    )


class PipelineConfig(Frozen):
    """Everything one run of the loop needs; every field has a working default."""

    model_name: str = Field("llmops-lm", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    promote: bool = Field(True, description="Move the production alias when the gate passes.")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[list[str]] = None) -> "PipelineConfig":
        """Load ``path``, apply ``a.b=value`` overrides, validate; errors name the file and field."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
        return cls.from_dict(raw, overrides, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], overrides: Optional[list[str]] = None, source: str = "config") -> "PipelineConfig":
        raw = apply_overrides(raw, overrides or [])
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, source)) from None

    def with_overrides(self, overrides: list[str]) -> "PipelineConfig":
        return self.from_dict(self.model_dump(mode="json"), overrides, source="overrides")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A configuration that does not validate; the message names the source and each bad field."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` strings (values parsed as YAML) to a nested dict copy."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy through plain types
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"override {item!r} must look like section.field=value")
        node = result
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # e.g. an unclosed list: an error naming the override, not a traceback
            why = getattr(exc, "problem", None) or exc
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({why})") from None
    return result


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
