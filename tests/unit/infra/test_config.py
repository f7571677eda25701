"""The typed configuration: defaults, YAML files shipped in configs/, overrides and their error messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmops.infra.config import ConfigError, PipelineConfig
from llmops.models.model.presets import PRESETS

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    config = PipelineConfig()
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert PipelineConfig.from_yaml(path) == config


def test_the_shipped_configs_are_found():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "small-cpu.yaml", "gpu-124m.yaml", "ddp-cpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates_and_names_a_known_preset(path):
    config = PipelineConfig.from_yaml(path)
    assert config.model.preset in PRESETS


def test_the_config_knows_exactly_the_presets_models_defines():
    from typing import get_args

    from llmops.infra.config import PresetName

    assert set(get_args(PresetName)) == {*PRESETS, "auto"}  # auto: sized to the budget (models/training/budget.py)


def test_overrides_parse_values_as_yaml():
    config = PipelineConfig().with_overrides(["train.max_steps=7", "data.sources=[a.txt, b.jsonl]", "promote=false"])
    assert config.train.max_steps == 7 and config.data.sources == ["a.txt", "b.jsonl"] and config.promote is False


@pytest.mark.parametrize("overrides, message", [
    (["train.max_steps=0"], r"train\.max_steps: Input should be greater than or equal to 1"),
    (["train.nonsense=1"], r"train\.nonsense: Extra inputs are not permitted"),
    (["model.preset=gpt2-125m"], r"model\.preset: Input should be 'auto', 'tiny', 'mini', .* or 'llama-1b'"),
    (["train.precision=fp8"], r"train\.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    (["data.min_chars=100", "data.max_chars=10"], "min_chars \\(100\\) exceeds max_chars \\(10\\)"),
    (["data.sources=[]"], "sources is empty"),
    (["monitor.psi_warn=0.5", "monitor.psi_alert=0.2"], r"psi_warn \(0.5\) exceeds psi_alert"),
    (["tokenizer.kind=pretrained"], "tokenizer.kind=pretrained needs tokenizer.path"),
    (["model_name=Has Spaces"], "model_name: String should match pattern"),
    (["max_steps"], "must look like section.field=value"),
])
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig().with_overrides(overrides)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        PipelineConfig.from_yaml(bad)
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError,
                       match=r"bad.yaml: 1 invalid field\(s\)\n  train.lr: Input should be greater than 0"):
        PipelineConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        PipelineConfig.from_yaml(tmp_path / "list.yaml")
