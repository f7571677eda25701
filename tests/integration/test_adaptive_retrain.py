"""Against a real Prefect API: a drift-triggered retrain continues production on the window's prompts (redacted,
deduplicated, never an evaluation document) plus a replay, gates on two slices, and profiles the new traffic."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.models.data import read_split, stdlib_code
from llmops.models.release.registry import Registry
from llmops.monitoring.records import DriftEvent, ReferenceProfile
from llmops.monitoring.synthetic import synthetic_records

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")


def code_prompts(n: int) -> list[str]:
    return list(dict.fromkeys(d.text for d in stdlib_code(max_bytes=400_000) if 200 <= len(d.text) <= 800))[:n]


def write_window(name: str, prompts: list[str], start: datetime) -> None:
    records = synthetic_records(len(prompts), seed=1, start=start, spacing_s=1, model=name)
    write_records(open_store(), name, [{**r, "prompt": p} for r, p in zip(records, prompts)])


def test_a_drift_retrain_adapts_production_to_the_window_and_gates_both_slices():
    from llmops.flows.retrain import retrain
    from llmops.flows.training_pipeline import training_pipeline

    name = f"adapt-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig.from_yaml("configs/tiny.yaml").with_overrides([
        f"model_name={name}", "compress.variants=[]", "adapt.max_minutes=null", "adapt.max_steps=40",
        "adapt.max_regression=0.05",
    ])
    first = training_pipeline(config)
    assert first.production_version == 1
    store = open_store()
    test_doc = read_split(store, first.dataset, "test")[0]
    code = code_prompts(120)
    secret = "contact me at jane.doe@example.com about it, " + code[0]
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    write_window(name, [secret, *code[1:], code[1], code[2], test_doc], start)

    drift = DriftEvent(model_name=name, model_version=1, window_id="w", window_start=start,
                       window_end=start + timedelta(minutes=5), severity="high", signals=["domain_classifier"])
    report = retrain(config, reason="drift", drift=drift)

    a = report.dataset.adaptation
    assert a is not None and a.base_version == 1
    assert a.traffic_records == 123 and a.duplicates == 2 and a.redacted >= 1 and a.eval_overlap == 1
    assert a.holdout + a.traffic_train + a.holdout_overlap == 120
    assert a.replay == min(round(a.traffic_train * 0.9 / 0.1), len(read_split(store, first.dataset, "train"))), (
        "traffic_share 0.1: 9 replayed documents per prompt, as many as production's training split holds")
    train, held = read_split(store, report.dataset, "train"), read_split(store, report.dataset, "validation")
    assert test_doc not in train and not set(train) & set(held), "no evaluation text is trained on"
    assert not any("jane.doe@example.com" in t for t in train + held) and any("[REDACTED]" in t for t in train + held)
    assert read_split(store, report.dataset, "test") == read_split(store, first.dataset, "test")

    assert report.run.method == "full" and report.run.base_model, "warm-started from production's weights"
    assert report.run.steps == 40
    gate = report.evaluation.gate
    assert [(s.split, s.rule) for s in gate.slices] == [("validation", "improve"), ("test", "no_regression")]
    assert gate.slices[0].documents == a.holdout and gate.promote == all(s.passed for s in gate.slices)
    assert gate.slices[0].difference < 0, "the warm start is better on held-out traffic of the new kind"

    registry = Registry(store, name)
    card = registry.read_file(2, "README.md").decode()
    assert "## Adaptation" in card and "held-out traffic" in card and "production test split" in card
    profile = ReferenceProfile.from_json(registry.read_file(2, "reference_profile.json"))
    assert profile.n_records == a.holdout, "v2's reference is the held-out new traffic"
