"""model.preset=auto: the shape for a wall-clock budget, from the scaling table, scaled by this machine's speed."""
from __future__ import annotations

import pytest

from llmops.infra.config import ConfigError, PipelineConfig, TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.records import ModelSizing
from llmops.models.training import budget
from llmops.models.training.checkpoint import TrainingError
from llmops.models.training.distributed import Parallel
from llmops.models.training.run import size_to_budget
from tests.helpers import train_stdlib_run

TABLE = {60.0: {"h64-l3": 2.90, "h128-l4": 3.10}, 240.0: {"h64-l3": 2.70, "h128-l4": 2.50}}


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(budget, "TABLE_BITS", TABLE)
    monkeypatch.setattr(budget, "TABLE_PROBE_TOKENS_PER_S", 10_000.0)


def test_bits_follow_the_log_of_the_budget_between_and_past_the_measured_ones(table):
    assert budget.predicted_bits("h128-l4", 60) == pytest.approx(3.10)
    assert budget.predicted_bits("h128-l4", 120) == pytest.approx(2.80)  # halfway in log between 60 and 240
    assert budget.predicted_bits("h128-l4", 480) == pytest.approx(2.20)  # the last slope carried on
    assert budget.predicted_bits("h64-l3", 30) == pytest.approx(3.00)
    # at most EXTRAPOLATE (4) times past the table's ends: a day of budget is not predicted to reach 0 bits
    assert budget.predicted_bits("h128-l4", 86_400) == pytest.approx(1.90) == budget.predicted_bits("h128-l4", 960)


def test_a_short_budget_gets_the_small_shape_a_long_one_the_big_one_and_speed_is_budget(table):
    assert budget.plan(60, speed=1.0).shape == "h64-l3"
    assert budget.plan(240, speed=1.0).shape == "h128-l4"
    # a machine four times as fast does in 60 s what the table's did in 240 s
    fast = budget.plan(60, speed=4.0)
    assert fast.shape == "h128-l4" and fast.predicted_bits == budget.plan(240, speed=1.0).predicted_bits
    assert fast.overrides == {"hidden_size": 128, "intermediate_size": 352, "num_attention_heads": 4,
                              "num_key_value_heads": 4, "num_hidden_layers": 4}
    assert fast.reason.startswith("h128-l4 (") and "4.00x the table's speed" in fast.reason


def test_the_shipped_table_covers_its_shapes_at_every_budget_and_has_its_probe():
    assert budget.TABLE_BITS and budget.TABLE_PROBE_TOKENS_PER_S > 0
    for row in budget.TABLE_BITS.values():
        assert set(row) <= set(budget.SHAPES) and budget.REFERENCE in row
    assert len({frozenset(r) for r in budget.TABLE_BITS.values()}) == 1, "every budget measures the same shapes"


def auto_config(**train) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "tokenizer": {"vocab_size": 300}, "model": {"preset": "auto"},
        "train": {"max_steps": 4, "max_minutes": None, "batch_size": 8, "block_size": 32, "eval_every": 4,
                  "checkpoint_every": 4, "num_threads": 1, **train}})


def test_an_auto_run_builds_the_planned_shape_and_keeps_the_plan_for_its_resume(tmp_path, table, monkeypatch):
    done = train_stdlib_run(tmp_path, auto_config(time_budget_s=60))
    sizing = done.run.sized
    assert sizing.shape in TABLE[60.0] and sizing.budget_s == 60 and sizing.speed > 0
    assert ModelSizing.model_validate(done.store.get_json(f"runs/{done.run.run_id}/sizing.json")) == sizing
    hidden = budget.SHAPES[sizing.shape][0]
    config = done.store.get_json(f"runs/{done.run.run_id}/final/config.json")
    assert (config["hidden_size"], config["num_hidden_layers"]) == (hidden, budget.SHAPES[sizing.shape][3])
    # a resumed run (or another rank) reads the plan back instead of planning again on its own machine
    monkeypatch.setattr(budget, "plan", lambda *a, **k: pytest.fail("planned again"))
    again = size_to_budget(done.store, f"runs/{done.run.run_id}", auto_config(time_budget_s=60).train, Parallel())
    assert again == sizing


def test_auto_without_a_budget_says_what_to_set(tmp_path, table):
    message = "model.preset=auto sizes the model to a wall-clock budget: set train.time_budget_s"
    with pytest.raises(ConfigError, match=message):  # when the configuration loads
        auto_config()
    with pytest.raises(TrainingError, match=message):  # and for a caller without a PipelineConfig
        size_to_budget(LocalStore(tmp_path), "runs/r", TrainConfig(max_minutes=None), Parallel())
