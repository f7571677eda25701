"""The drift-triggered retrain's plan (tasks/core/adaptation.py): the warm-start configuration, and no plan without
a production version."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.monitoring.synthetic import synthetic_records
from llmops.tasks.core.adaptation import plan_adaptation, warm_start_config

T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)


def test_warm_start_config_continues_from_the_folder_on_adapts_schedule(tmp_path):
    config = PipelineConfig(model_name="lm").with_overrides([
        "adapt.lr=0.0004", "adapt.warmup_steps=7", "adapt.min_lr_ratio=0.2", "adapt.max_minutes=0.5",
        "adapt.max_steps=123", "adapt.lora={r: 4}", "train.time_budget_s=900", "train.lr=0.003",
        "tokenizer.kind=pretrained", "tokenizer.path=/somewhere/else", "train.seed=11",
    ])
    folder = tmp_path / "production-v3"
    warm = warm_start_config(config, folder)
    assert warm.model.pretrained == str(folder)
    assert (warm.train.lr, warm.train.warmup_steps, warm.train.min_lr_ratio) == (0.0004, 7, 0.2)
    assert (warm.train.max_minutes, warm.train.max_steps) == (0.5, 123)
    assert warm.train.time_budget_s is None
    assert warm.train.budget_s == 30.0  # the budget is adapt's, not the full run's 900 s
    assert warm.train.lora == config.adapt.lora and warm.train.lora.r == 4
    assert (warm.tokenizer.kind, warm.tokenizer.path) == ("bpe", None)  # the base model's own tokenizer
    # everything else is the configuration's
    assert warm.train.seed == 11
    assert warm.model.preset == config.model.preset
    assert (warm.data, warm.adapt, warm.gate, warm.model_name) == (config.data, config.adapt, config.gate, "lm")
    assert config.model.pretrained is None and config.train.lr == 0.003  # the input is not changed
    assert PipelineConfig.model_validate(warm.model_dump()) == warm  # and the result is a valid configuration


def test_warm_start_without_lora_trains_every_weight(tmp_path):
    config = PipelineConfig(model_name="lm").with_overrides(["train.lora={r: 8}"])
    assert config.adapt.lora is None
    assert warm_start_config(config, Path(tmp_path)).train.lora is None


def test_no_plan_without_a_production_version(tmp_path):
    store = open_store()
    start = T0
    write_records(store, "lm", synthetic_records(50, seed=0, start=start + timedelta(minutes=5), model="lm"))
    plan, reason = plan_adaptation(store, PipelineConfig(model_name="lm"), start, start + timedelta(hours=1),
                                   tmp_path / "cache")
    assert plan is None
    assert reason == "lm has no production version to continue from"
    assert not store.list("datasets")  # nothing was snapshot
