"""The whole configuration of one run of the loop, loaded from YAML with ``section.field=value`` overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from llmops.infra.config.adapt import AdaptConfig
from llmops.infra.config.base import ConfigError, Frozen, apply_overrides, explain
from llmops.infra.config.compression import CompressConfig
from llmops.infra.config.data import DataConfig, TokenizerConfig
from llmops.infra.config.evaluation import EvalConfig, GateConfig
from llmops.infra.config.model import ModelConfig
from llmops.infra.config.monitoring import MonitorConfig, ScheduleConfig
from llmops.infra.config.serving import ServeConfig
from llmops.infra.config.train import TrainConfig


class PipelineConfig(Frozen):
    """Everything one run of the loop needs; every field has a working default."""

    model_name: str = Field(
        "llmops-lm", pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="Registry name of the model: its versions and aliases (models/<name>/) and its captured traffic "
        "(traffic/<name>/) live under it in the store; lowercase letters, digits, '_', '.' and '-'.",
    )
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="Where the training text comes from, and how records are validated, redacted and split into "
        "train, validation and test.",
    )
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig,
        description="The tokenizer: a byte-level BPE trained on the train split, or an existing one attached.",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="What is trained: a preset architecture (or auto, sized to the train section's wall-clock "
        "budget), or a pretrained causal LM to fine-tune.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="The training run: steps and wall-clock budget, batch, optimizer and schedule, precision and "
        "kernels, checkpoints, LoRA and torch.distributed scale-out.",
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig,
        description="How a candidate is scored (bits per byte on validation and test documents) and which sample "
        "completions its report records.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Champion/challenger gate: when a candidate may replace production, by a paired bootstrap "
        "over the documents both are scored on.",
    )
    compress: CompressConfig = Field(
        default_factory=CompressConfig,
        description="Variants (int8, bf16) made of each version behind a parity and speed gate, and an optional "
        "distilled or pruned student.",
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig,
        description="The OpenAI-compatible server (`llmops serve`): address, request limits, batching, traffic "
        "capture, reload and canary rollout.",
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Drift detection on the captured traffic: reference profile, per-signal tests and thresholds, "
        "alert policy, traffic compaction.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="When the deployments run by themselves: the scheduled retrain, the drift-check interval and "
        "their time zone.",
    )
    adapt: AdaptConfig = Field(
        default_factory=AdaptConfig,
        description="What a drift-triggered retrain does: continue production on the drifted traffic mixed with a "
        "replay (warm_start) or retrain from scratch (full), and the gate it must pass.",
    )
    promote: bool = Field(True, description="Move the production alias when the gate passes.")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.model.preset == "auto" and not self.model.pretrained and not self.train.budget_s:
            raise ValueError("model.preset=auto sizes the model to a wall-clock budget: set train.time_budget_s "
                             "(or train.max_minutes)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[list[str]] = None) -> PipelineConfig:
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
    def from_dict(cls, raw: dict[str, Any], overrides: Optional[list[str]] = None,
                  source: str = "config") -> PipelineConfig:
        raw = apply_overrides(raw, overrides or [])
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(explain(exc, source)) from None

    def with_overrides(self, overrides: list[str]) -> PipelineConfig:
        return self.from_dict(self.model_dump(mode="json"), overrides, source="overrides")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
