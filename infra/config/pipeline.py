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
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
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
