"""The compress section: precision variants behind a parity gate, distillation and structured pruning."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from llmops.infra.config.base import Frozen
from llmops.infra.config.model import PresetName

Variant = Literal["int8", "bf16"]


class DistillConfig(Frozen):
    """Teacher -> student: cross-entropy on the data plus a divergence between next-token distributions."""

    enabled: bool = Field(
        False, description="In the training pipeline: distill a student from the candidate just trained, then "
        "evaluate, gate and register it as its own version."
    )
    student_preset: PresetName = Field("tiny", description="The student's preset (sized to the teacher's tokenizer).")
    student_overrides: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="Fields of the student's transformers config to override."
    )
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="forward_kl: KL(teacher || student) (Hinton et al.); reverse_kl: KL(student || "
        "teacher) (MiniLLM); jsd: generalized Jensen-Shannon with `jsd_beta` (TRL's GKD)."
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the divergence; 1 - alpha weighs the cross-entropy.")
    temperature: float = Field(
        2.0, gt=0, description="Both distributions are softened by it; the term is scaled by T²."
    )
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="The mixture weight of generalized JSD (loss: jsd).")
    top_k: Optional[int] = Field(
        None, ge=1, description="Keep the teacher's top-k tokens per position (renormalized): less memory, a "
        "truncated target."
    )
    max_minutes: Optional[float] = Field(
        None, gt=0, description="The student's wall-clock budget (default: train.max_minutes)."
    )


class PruneConfig(Frozen):
    """Structured pruning to a real smaller config, healed by distillation from the unpruned model (Minitron)."""

    enabled: bool = Field(
        False, description="In the training pipeline: prune the candidate and heal it by distillation."
    )
    keep: float = Field(0.5, gt=0, le=1, description="The fraction of the trunk's parameters to keep (approximate).")
    axes: Literal["depth", "width", "both"] = Field(
        "both", description="Drop whole decoder layers, shrink MLP channels and attention heads, or both."
    )
    calibration_docs: int = Field(64, ge=1, description="Training documents whose activations rank what to keep.")


class CompressConfig(Frozen):
    """What each version is compressed into. Every variant is measured beside its fp32 parent on the test documents
    and may serve only if it is smaller on disk, decodes faster (require_faster) and stays within the parity bound
    on bits/byte; distill and prune optionally make a smaller student, released as a version of its own."""

    variants: list[Variant] = Field(
        default_factory=lambda: ["int8", "bf16"],
        description="Variants made per version: int8 (dynamic int8 on every Linear and Conv1D) and bf16. Each must "
        "pass its parity gate and be faster and smaller than fp32 to be served.",
    )
    max_relative_bpb_increase: float = Field(
        0.01, ge=0, description="Parity gate: the upper end of the 95% interval of the bits/byte increase, relative "
        "to the parent's bits/byte."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the paired bootstrap interval.")
    bootstrap_samples: int = Field(
        1000, ge=100, description="Resamples of the documents in the parity gate's paired bootstrap."
    )
    require_faster: bool = Field(
        True, description="A variant must decode faster (batch 1 and 8) than its parent to be served."
    )
    decode_tokens: int = Field(32, ge=1, description="New tokens per speed measurement.")
    speed_runs: int = Field(3, ge=1, description="Timed runs per batch size; the median is kept.")
    distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="Distill a smaller student preset from the candidate; its loss settings also heal a pruned copy.",
    )
    prune: PruneConfig = Field(
        default_factory=PruneConfig,
        description="Prune the candidate into a smaller student instead of a preset, healed by distillation.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_quantize(cls, data):
        """Configurations saved before variants existed said ``quantize: int8|none``."""
        if isinstance(data, dict) and "quantize" in data:
            data = dict(data)
            old = data.pop("quantize")
            data["variants"] = [] if old == "none" else [old]
            data.pop("max_bpb_increase", None)
            data.pop("latency_runs", None)
        return data
