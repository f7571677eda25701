"""The records stages exchange: frozen, JSON-serialisable, each pointing at store artifacts by URI + sha256."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

SplitName = Literal["train", "validation", "test"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SplitRef(Record):
    uri: str
    sha256: str
    records: int
    bytes: int


class Adaptation(Record):
    """How a drift-triggered retrain's data was made: traffic of the event's window, cleaned, mixed with a replay.

    In an adaptation snapshot the ``validation`` split is the held-out traffic (the gate's new slice and the new
    reference profile) and ``test`` is production's own test split (the gate's old slice).
    """

    base_version: int = Field(description="The production version the retrain continues from")
    base_dataset: str = Field(description="URI of the base version's dataset snapshot (replay and old test split)")
    window_start: datetime
    window_end: datetime
    traffic_records: int = Field(description="Records read from the window (after sampling down to the cap)")
    sampled_from: int = Field(description="Records in the window before sampling")
    duplicates: int = Field(description="Prompts equal to an earlier one")
    invalid: dict[str, int] = Field(default_factory=dict, description="Prompts unusable as text, per reason")
    redacted: int = Field(description="Prompts the redaction patterns or hook changed")
    dropped_by_hook: int = Field(description="Prompts the redaction hook dropped")
    eval_overlap: int = Field(description="Prompts excluded because they overlap an evaluation document")
    holdout_overlap: int = Field(
        description="Training prompts and replayed documents excluded because they overlap a held-out prompt")
    holdout: int = Field(description="Traffic prompts held out (never trained on)")
    traffic_train: int = Field(description="Traffic prompts in the training split")
    replay: int = Field(description="Documents replayed from the base version's training split")


class DatasetRef(Record):
    """An immutable dataset snapshot: ``datasets/<name>/<sha256>/`` with a manifest committed last."""

    name: str
    uri: str = Field(description="URI of the snapshot's manifest.json")
    sha256: str = Field(description="Content hash over the texts of every split, in order")
    splits: dict[str, SplitRef]
    rejected: dict[str, int] = Field(default_factory=dict, description="Quarantined records per reason")
    quarantine_uri: Optional[str] = None
    sources: list[str]
    adaptation: Optional[Adaptation] = Field(None, description="Set for a drift-triggered retrain's snapshot")


class TokenizerRef(Record):
    uri: str = Field(description="URI of the tokenizer folder (holds tokenizer.json, tokenizer_config.json)")
    sha256: str = Field(description="sha256 of tokenizer.json")
    kind: Literal["bpe", "pretrained"]
    vocab_size: int
    eos_token_id: int
    trained_on: Optional[str] = Field(None, description="sha256 of the dataset snapshot it was trained on")


class PackedRef(Record):
    """Tokens ready for training under ``packed/<key>/``, in one of two layouts.

    ``blocks``: ``{split}.npy`` of shape (n_blocks, block_size), documents concatenated with eos
    (train.batching=pack). ``ragged``: one example per document, truncated to block_size, as
    ``{split}.ids.npy`` (all tokens, flat) and ``{split}.offsets.npy`` (n_documents + 1 int64:
    example i is ``ids[offsets[i]:offsets[i + 1]]``) (train.batching=pad).
    """

    uri: str = Field(description="URI of the packed folder's manifest.json")
    sha256: str = Field(
        description="Hash of the dataset, tokenizer, block size and layout the examples were built from")
    block_size: int
    blocks: dict[str, int] = Field(description="Examples per split: blocks, or documents in the ragged layout")
    tokens: dict[str, int]
    layout: Literal["blocks", "ragged"] = "blocks"


class PreflightReport(Record):
    """What a run needs before it starts: memory per device, compute, data, and an estimated duration."""

    device: str
    precision: str
    parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int = Field(description="Estimated peak activation memory of one micro-batch")
    total_bytes: int
    available_bytes: int = Field(description="Free device memory (CUDA) or available RAM (CPU) now")
    rule_of_thumb_hold_bytes: int = Field(description="~4 bytes/parameter to hold the weights in fp32")
    rule_of_thumb_train_bytes: int = Field(description="~4 + 20 bytes/parameter to train in fp32 with Adam")
    tokens_per_step: int
    planned_tokens: int
    available_tokens: int = Field(description="Tokens in the training split (one epoch)")
    chinchilla_tokens: int = Field(description="~20 tokens per parameter: the compute-optimal amount of data")
    training_flops: float = Field(description="~6 * parameters * planned tokens")
    measured_step_s: Optional[float] = Field(None, description="Median forward+backward time of one micro-batch")
    estimated_duration_s: Optional[float] = None
    fits: bool
    advice: list[str] = Field(default_factory=list)


class KernelTiming(Record):
    """One setting a calibration timed: a few optimizer steps of the run's own model and batch."""

    setting: str = Field(description="What it is, in words, e.g. 'fp32 + oneDNN linear layers'")
    precision: Literal["fp32", "bf16", "fp16"]
    cpu_matmul: Literal["aten", "onednn"]
    compile: bool
    step_s: float = Field(description="Median seconds of an optimizer step, after a warm-up step")
    loss: float = Field(description="Loss of the last step, trained from the same weights on the same batches")
    passed: bool = Field(description="The loss is within the tolerance of fp32 with ATen matmuls (the reference)")
    candidate: bool = Field(True, description="False for the reference when the configuration rules it out")


class KernelChoice(Record):
    """The precision and kernels a run trains with, how they were decided, and the measurements behind it."""

    precision: Literal["fp32", "bf16", "fp16"]
    cpu_matmul: Literal["aten", "onednn"]
    compile: bool
    label: str = Field(description="The choice in words")
    source: Literal["calibrated", "cached", "run", "explicit", "default"] = Field(
        description="calibrated now; cached: this machine's earlier calibration of the same shapes; run: the run's "
        "own decision (a resumed run, a rank other than 0); explicit: the configuration leaves one setting; "
        "default: not measured (too short a run to pay for it, or sharded)")
    reason: str
    fingerprint: str = Field(description="Hash of the machine, torch build, threads, model shape and batch")
    timings: list[KernelTiming] = Field(default_factory=list)


class ModelSizing(Record):
    """``model.preset=auto``: the shape chosen for the run's wall-clock budget on the machine that chose it."""

    shape: str = Field(description="A name of llmops.models.training.budget.SHAPES, e.g. h96-l3")
    overrides: dict[str, int] = Field(description="The transformers config fields of that shape")
    speed: float = Field(description="This machine's speed on the reference shape, over the scaling table's")
    budget_s: float
    reason: str


class Distillation(Record):
    """A distilled run's teacher and loss (compress.distill): part of the run id, so another teacher is another run."""

    teacher: str = Field(description="The teacher's model folder: store URI or local path (informational)")
    teacher_sha256: str = Field(description="sha256 of the teacher's model.safetensors: its identity")
    teacher_version: Optional[int] = Field(None, description="The teacher's registry version, when known")
    loss: Literal["forward_kl", "reverse_kl", "jsd"]
    alpha: float = Field(description="Weight of the divergence; 1 - alpha weighs the cross-entropy")
    temperature: float
    jsd_beta: Optional[float] = Field(None, description="The mixture weight of generalized JSD (loss: jsd only)")
    top_k: Optional[int] = Field(None, description="The teacher truncated to its top-k tokens per position")


class TrainRef(Record):
    """A finished (or budget-stopped) training run: ``runs/<run_id>/``."""

    run_id: str
    uri: str = Field(description="URI of the final model folder (save_pretrained layout + tokenizer)")
    sha256: str = Field(description="sha256 of model.safetensors")
    steps: int
    tokens_seen: int
    final_train_loss: float
    final_val_loss: Optional[float]
    wall_s: float
    metrics_uri: str
    loss_plot_uri: Optional[str]
    parameters: int
    device: str
    precision: str
    resumed_from_step: Optional[int] = None
    method: Literal["scratch", "full", "lora", "distill"] = Field(
        "scratch", description="Trained from scratch, or fine-tuned from base_model (every weight, or LoRA merged), "
        "or distilled from a teacher (see distillation)")
    base_model: Optional[str] = Field(
        None, description="The pretrained model fine-tuned: path or hub id @ content hash")
    preflight: Optional[PreflightReport] = None
    kernels: Optional[KernelChoice] = Field(None, description="The precision and kernels it trained with, and why")
    sized: Optional[ModelSizing] = Field(None, description="model.preset=auto: the shape sized to the budget")
    distillation: Optional[Distillation] = Field(None, description="The teacher and loss of a distilled run")


class DocScores(Record):
    """Per-document negative log-likelihoods, so a gate can bootstrap over documents."""

    nll_nats: list[float]
    tokens: list[int]
    bytes: list[int]


class SplitEval(Record):
    split: str
    documents: int
    tokens: int
    bytes: int
    loss: float = Field(description="Mean NLL per token (nats)")
    perplexity: float
    bits_per_byte: float


class SampleParams(Record):
    """The generation knobs a sample was drawn with (``SamplingParams`` of models/model/generation.py, less stops)."""

    max_new_tokens: int
    do_sample: bool = Field(description="False: greedy decoding (temperature, top_k and top_p unused)")
    temperature: float
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float
    seed: Optional[int] = None


class Sample(Record):
    setting: str
    params: Optional[SampleParams] = Field(None, description="None in reports written before samples recorded them")
    prompt: str
    completion: str


class GateSlice(Record):
    """One slice a gate judges: candidate minus production bits/byte on the same documents, with a paired CI."""

    name: str = Field(description="e.g. 'held-out traffic', 'production test split'")
    split: str = Field(description="The dataset split it was scored on")
    rule: Literal["improve", "no_regression"]
    documents: int
    candidate_bits_per_byte: float
    production_bits_per_byte: float
    difference: float
    ci_low: float
    ci_high: float
    limit: float = Field(description="The CI's upper end must stay below this")
    passed: bool


class GateDecision(Record):
    promote: bool
    reason: str
    candidate_version: Optional[int] = Field(None, description="the registry version the candidate will have")
    candidate_bits_per_byte: float
    production_bits_per_byte: Optional[float] = None
    production_version: Optional[int] = None
    difference: Optional[float] = Field(None, description="candidate - production, bits per byte (negative is better)")
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    threshold: float
    documents: int
    slices: list[GateSlice] = Field(
        default_factory=list, description="An adaptation's gate: every slice judged (the top-level numbers are the "
        "production test split's)",
    )


class EvalReport(Record):
    uri: str = Field(description="URI of eval.json")
    sha256: str
    splits: dict[str, SplitEval]
    samples: list[Sample]
    gate: GateDecision


class VariantReport(Record):
    """One compressed variant measured beside its parent (fp32) in the same run: speed, size, parity."""

    variant: Literal["int8", "bf16"]
    uri: str = Field(description="URI of the variant's folder (weights + variant.json)")
    sha256: str = Field(description="sha256 of the variant's weights file")
    bytes: int = Field(description="Size of the weights file on disk")
    tokens_per_s: dict[int, float] = Field(description="Greedy decode tokens/s by batch size")
    bits_per_byte: Optional[float] = None
    bpb_increase: Optional[float] = Field(None, description="Variant minus parent bits/byte on the same documents")
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    relative_increase_high: Optional[float] = Field(None, description="ci_high / the parent's bits/byte")
    mean_kl: Optional[float] = Field(None, description="Mean per-token KL(parent || variant), nats")
    top1_agreement: Optional[float] = Field(None, description="Share of positions with the same top next token")
    faster: bool
    smaller: bool
    parity: Optional[bool] = Field(None, description="None: not measured (the variant was out on speed already)")
    servable: bool
    reasons: list[str] = Field(default_factory=list, description="Why it is not servable; empty when it is")


class CompressionReport(Record):
    """The compress stage: every variant of a run's model against its parent, and the one ``auto`` serves."""

    parent_bytes: int
    parent_tokens_per_s: dict[int, float]
    parent_bits_per_byte: Optional[float] = None
    documents: int = Field(description="Test documents both sides were scored on")
    variants: list[VariantReport]
    serve: str = Field(description="What serve.variant=auto serves on CPU: the fastest servable variant, else fp32")

    def servable(self) -> list[VariantReport]:
        return [v for v in self.variants if v.servable]


class PrunedRef(Record):
    """A structurally pruned copy of a run's model (compress.prune), the starting point of a healed student."""

    uri: str = Field(description="URI of the pruned save_pretrained folder (with its tokenizer and prune_report.json)")
    sha256: str = Field(description="sha256 of its model.safetensors")
    source_sha256: str = Field(description="sha256 of the pruned model's model.safetensors")
    keep: float
    axes: str
    parameters_before: int
    parameters_after: int
    shape: dict[str, tuple[int, int]] = Field(description="layers, intermediate_size, heads: before and after")


class ProfileRef(Record):
    """A version's reference profile (monitoring's ReferenceProfile, JSON) staged in the store for registration."""

    uri: str = Field(description="URI of reference_profile.json in the claimed version's folder")
    sha256: str
    model_version: int
    records: int = Field(description="Reference records profiled (validation documents run through the model)")
    signals: list[str]


class VersionMetadata(Record):
    """What the pipeline records with a version: the run and data it came from, and the gate's decision."""

    run_id: str
    dataset: str = Field(description="URI of the dataset snapshot's manifest")
    dataset_sha256: str
    tokenizer_sha256: str
    gate: GateDecision
    test_bits_per_byte: float
    serving_variant: Optional[str] = Field(
        None, description="The variant serve.variant=auto serves on CPU: the fastest one that passed its gate"
    )


class VersionManifest(Record):
    """``models/<name>/versions/<n>/manifest.json``, written last: the version exists once it does."""

    name: str
    version: int
    created_at: datetime
    files: dict[str, str] = Field(description="Path in the version's folder -> sha256")
    variants: list[str] = Field(description="fp32 first, then the compressed variants under variants/<name>/")
    metadata: Optional[VersionMetadata] = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _none_when_empty(cls, value: Any) -> Any:
        return value or None  # versions registered without metadata stored {}


class ModelVersionRef(Record):
    name: str
    version: int
    uri: str = Field(description="URI of the version's manifest.json")
    sha256: str = Field(description="sha256 of the version's model.safetensors")
    variants: list[str]
    aliases: list[str] = Field(default_factory=list)


class ReleaseReport(Record):
    """A trained run released through the pipeline's stages: evaluated, compressed, registered, maybe promoted."""

    run: TrainRef
    evaluation: EvalReport
    compression: Optional[CompressionReport]
    version: ModelVersionRef
    promoted: bool
    production_version: Optional[int]


class StudentReport(ReleaseReport):
    """A student pruned from and/or distilled from a teacher, released like any candidate."""

    pruned: Optional[PrunedRef] = None


class PipelineReport(ReleaseReport):
    """What one run of the training pipeline produced and decided: the candidate's release, and its student's."""

    model_name: str
    dataset: DatasetRef
    tokenizer: TokenizerRef
    model_card_uri: str
    student: Optional[StudentReport] = Field(None, description="compress.distill / compress.prune: the student")
