"""The one typed pipeline configuration: nested frozen pydantic models with defaults that work, YAML-loadable.

One module per section; everything is importable from here.
"""
from llmops.infra.config.adapt import AdaptConfig
from llmops.infra.config.base import (
    ADDED_LATER,
    EXECUTION_ONLY,
    ConfigError,
    Frozen,
    RunIdRule,
    apply_overrides,
    pinned,
)
from llmops.infra.config.compression import CompressConfig, DistillConfig, PruneConfig
from llmops.infra.config.data import DataConfig, RedactSettings, TokenizerConfig
from llmops.infra.config.evaluation import EvalConfig, GateConfig, GenerationSettings
from llmops.infra.config.model import ModelConfig, PresetName
from llmops.infra.config.monitoring import MonitorConfig, ScheduleConfig, SignalThresholds
from llmops.infra.config.pipeline import PipelineConfig
from llmops.infra.config.serving import CanaryConfig, ServeConfig
from llmops.infra.config.train import DistributedSettings, LoraSettings, TrainConfig

__all__ = [
    "ADDED_LATER", "AdaptConfig", "CanaryConfig", "CompressConfig", "ConfigError", "DataConfig", "DistillConfig",
    "DistributedSettings", "EXECUTION_ONLY", "EvalConfig", "Frozen", "GateConfig", "GenerationSettings",
    "LoraSettings", "ModelConfig", "MonitorConfig", "PipelineConfig", "PresetName", "PruneConfig", "RedactSettings",
    "RunIdRule", "ScheduleConfig", "ServeConfig", "SignalThresholds", "TokenizerConfig", "TrainConfig",
    "apply_overrides", "pinned",
]
