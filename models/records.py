"""The records stages exchange: frozen, JSON-serialisable, each pointing at store artifacts by URI + sha256."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SplitName = Literal["train", "validation", "test"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SplitRef(Record):
    uri: str
    sha256: str
    records: int
    bytes: int


class DatasetRef(Record):
    """An immutable dataset snapshot: ``datasets/<name>/<sha256>/`` with a manifest committed last."""

    name: str
    uri: str = Field(description="URI of the snapshot's manifest.json")
    sha256: str = Field(description="Content hash over the texts of every split, in order")
    splits: dict[str, SplitRef]
    rejected: dict[str, int] = Field(default_factory=dict, description="Quarantined records per reason")
    quarantine_uri: Optional[str] = None
    sources: list[str]


class TokenizerRef(Record):
    uri: str = Field(description="URI of the tokenizer folder (holds tokenizer.json, tokenizer_config.json)")
    sha256: str = Field(description="sha256 of tokenizer.json")
    kind: Literal["bpe", "pretrained"]
    vocab_size: int
    eos_token_id: int
    trained_on: Optional[str] = Field(None, description="sha256 of the dataset snapshot it was trained on")


class PackedRef(Record):
    """Token blocks ready for training: ``packed/<key>/{train,validation}.npy`` of shape (n_blocks, block_size)."""

    uri: str = Field(description="URI of the packed folder's manifest.json")
    sha256: str = Field(description="Hash of the dataset, tokenizer and block size the blocks were built from")
    block_size: int
    blocks: dict[str, int]
    tokens: dict[str, int]


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


class Sample(Record):
    setting: str
    prompt: str
    completion: str


class GateDecision(Record):
    promote: bool
    reason: str
    candidate_bits_per_byte: float
    production_bits_per_byte: Optional[float] = None
    production_version: Optional[int] = None
    difference: Optional[float] = Field(None, description="candidate - production, bits per byte (negative is better)")
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    threshold: float
    documents: int


class EvalReport(Record):
    uri: str = Field(description="URI of eval.json")
    sha256: str
    splits: dict[str, SplitEval]
    samples: list[Sample]
    gate: GateDecision


class QuantReport(Record):
    variant: Literal["int8"]
    uri: str = Field(description="URI of the quantized state dict")
    sha256: str
    fp32_bytes: int
    int8_bytes: int
    fp32_bits_per_byte: float
    int8_bits_per_byte: float
    bpb_increase: float
    fp32_latency_ms: float
    int8_latency_ms: float
    servable: bool


class ModelVersionRef(Record):
    name: str
    version: int
    uri: str = Field(description="URI of the version's manifest.json")
    sha256: str = Field(description="sha256 of the version's model.safetensors")
    variants: list[str]
    aliases: list[str] = Field(default_factory=list)


class PipelineReport(Record):
    """What one run of the training pipeline produced and decided."""

    model_name: str
    dataset: DatasetRef
    tokenizer: TokenizerRef
    run: TrainRef
    evaluation: EvalReport
    quantization: Optional[QuantReport]
    version: ModelVersionRef
    promoted: bool
    production_version: Optional[int]
    model_card_uri: str
