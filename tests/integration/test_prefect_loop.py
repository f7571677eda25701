"""Against a real Prefect API: the drift check emits the event, the deployment trigger creates the retrain run,
the cooldown stops a second one, and the training pipeline runs as a flow with its artifacts and events."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.events import emit_event

from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import DriftEvent
from llmops.monitoring.synthetic import TrafficShape, synthetic_records
from llmops.tasks.monitoring import DRIFT_EVENT
from tests.helpers import make_registered_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("prefect_api")


def tokenize(texts):
    return tiny_tokenizer()(list(texts), add_special_tokens=False)["input_ids"]


def drift_setup(name: str) -> tuple[PipelineConfig, datetime, datetime]:
    """A production model whose reference is normal synthetic traffic, and a window of drifted traffic."""
    config = PipelineConfig(model_name=name).with_overrides(["monitor.min_samples=50", "monitor.cooldown_minutes=60"])
    reference = synthetic_records(400, TrafficShape(), seed=1, model=name)
    profile = build_profile(reference, tokenize, config.monitor, model_name=name, model_version=1)
    store = open_store()
    make_registered_model(store, name, files={"reference_profile.json": profile.to_json()})
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(minutes=10)
    drifted = TrafficShape(words_mean=60, vocab_offset=200, surprisal_mean=6.0, length_stop_share=0.1)
    write_records(store, name, synthetic_records(150, drifted, seed=2, start=start, spacing_s=2, model=name))
    return config, start, end


def wait_until(predicate, what: str, timeout: float = 90.0, interval: float = 1.0):
    """Poll ``predicate`` until it returns something truthy (returned); past ``timeout``, fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def model_runs(name: str, since: datetime):
    """The retrain runs the drift trigger created for model ``name`` since ``since``."""
    from llmops.flows.triggered import triggered_runs

    return [r for r in triggered_runs("retrain", since) if r.parameters["config"]["model_name"] == name]


def test_drift_event_triggers_exactly_one_retrain_and_the_cooldown_holds_the_second(tmp_path):
    from llmops.flows.deployments import build_deployments
    from llmops.flows.monitor_drift import monitor_drift

    name = f"drift-{uuid.uuid4().hex[:8]}"
    config, start, end = drift_setup(name)
    retrain = next(d for d in build_deployments(config) if d.name == "retrain")
    retrain.apply()
    since = datetime.now(timezone.utc)

    first = monitor_drift(config, start=start, end=end)
    assert first.verdict == "alert" and first.event_emitted and first.event_reason == "alert confirmed"
    assert {"prompt_tokens", "prompt_surprisal"} <= set(first.alerting_signals)
    runs = wait_until(lambda: model_runs(name, since), "the trigger to create the retrain run")
    assert len(runs) == 1, "one drift event, one retrain run"
    params = runs[0].parameters
    drift = params["drift"]  # the event's payload, whole
    assert params["reason"] == "drift" and drift["severity"] == first.severity
    assert (drift["model_name"], drift["window_id"]) == (name, first.window_id)
    assert datetime.fromisoformat(drift["window_start"]) == start and "prompt_surprisal" in drift["signals"]
    assert params["config"]["model_name"] == name, "the deployment's config travels with the triggered run"

    second = monitor_drift(config, start=start, end=end)
    assert second.verdict == "alert" and not second.event_emitted and "cooldown" in second.event_reason
    # a marker event, emitted directly (no cooldown on that path), goes through the same events client and trigger
    # after anything the second check could have emitted: once the marker's run exists, such a run would too
    emit_event(event=DRIFT_EVENT,
               resource={"prefect.resource.id": f"llmops.model.{name}", "prefect.resource.name": name},
               payload=DriftEvent(model_name=name, model_version=1, window_id="marker", severity="high",
                                  signals=["prompt_tokens"]).model_dump(mode="json"))

    def runs_once_the_marker_ran():
        found = model_runs(name, since)
        return found if any(r.parameters["drift"]["window_id"] == "marker" for r in found) else None

    after = wait_until(runs_once_the_marker_ran, "the retrain run of the marker drift event")
    assert sorted(r.parameters["drift"]["window_id"] for r in after) == sorted([first.window_id, "marker"]), (
        "the second check, held by the cooldown, must not have triggered a retrain")


def test_familiar_traffic_does_not_alert():
    from llmops.flows.monitor_drift import monitor_drift

    name = f"quiet-{uuid.uuid4().hex[:8]}"
    config, _, end = drift_setup(name)
    start = end + timedelta(minutes=1)
    write_records(open_store(), name,
                  synthetic_records(150, TrafficShape(), seed=3, start=start, spacing_s=2, model=name))
    outcome = monitor_drift(config, start=start, end=start + timedelta(minutes=10))
    assert outcome.verdict in ("ok", "warn") and not outcome.event_emitted
    assert outcome.n_samples == 150


def test_training_pipeline_flow_trains_gates_registers_and_reuses_unchanged_stages():
    from prefect.client.orchestration import get_client

    from llmops.flows.training_pipeline import training_pipeline
    from llmops.models.release.registry import Registry

    # int8 need not be faster here and any loss is tolerated, so it is servable whatever this machine measures
    config = PipelineConfig.from_yaml("configs/tiny.yaml").with_overrides(
        [f"model_name=pipe-{uuid.uuid4().hex[:8]}", "compress.variants=[int8]", "compress.require_faster=false",
         "compress.max_relative_bpb_increase=1000"])
    report = training_pipeline(config)
    assert report.promoted and report.version.version == 1 and report.production_version == 1
    assert report.evaluation.splits["test"].bits_per_byte < config.gate.max_bits_per_byte
    assert report.run.steps == config.train.max_steps and report.run.loss_plot_uri.endswith("loss.png")
    store = open_store()
    registry = Registry(store, config.model_name)
    files = registry.manifest(1).files
    assert {"model.safetensors", "README.md", "eval.json", "reference_profile.json"} <= set(files)
    assert report.compression is not None and report.compression.serve == "int8"
    assert "variants/int8/model.int8.safetensors" in files, "a servable int8 variant is registered with the version"
    assert registry.manifest(1).metadata.serving_variant == "int8"
    profile = json.loads(registry.read_file(1, "reference_profile.json"))
    assert profile["model_variant"] == "int8", "the reference is profiled with the variant auto serves"

    again = training_pipeline(config)
    assert again.dataset == report.dataset and again.tokenizer == report.tokenizer and again.run == report.run
    assert not again.promoted and registry.alias("production") == 1, "an identical model does not beat production"
    assert again.evaluation.gate.difference == pytest.approx(0.0, abs=1e-6)
    assert (report.evaluation.gate.candidate_version, again.evaluation.gate.candidate_version) == (1, 2)
    assert again.evaluation.gate.production_version == 1 and again.version.version == 2

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert f"{config.model_name}-evaluation" in keys and f"{config.model_name}-model-card" in keys


def test_deploying_limits_the_accelerator_tag_to_one_run_and_keeps_a_raised_limit():
    from prefect import get_client

    from llmops.flows.deployments import limit_accelerator
    from llmops.tasks.core.context import ACCELERATOR_TAG

    with get_client(sync_client=True) as client:
        try:
            client.delete_concurrency_limit_by_tag(ACCELERATOR_TAG)
        except Exception:  # not there yet
            pass
        assert limit_accelerator() == 1
        assert client.read_concurrency_limit_by_tag(ACCELERATOR_TAG).concurrency_limit == 1
        client.delete_concurrency_limit_by_tag(ACCELERATOR_TAG)
        client.create_concurrency_limit(tag=ACCELERATOR_TAG, concurrency_limit=2)  # a node with two GPUs
        assert limit_accelerator() == 2
