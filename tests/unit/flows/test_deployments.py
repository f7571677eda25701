"""Deployment definitions, built without a Prefect server: names, schedules, the drift trigger, concurrency,
parameters."""
from __future__ import annotations

import copy
import os
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.server.events.actions import RunDeployment
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

from llmops.flows.cli import main
from llmops.flows.deployments import build_deployments
from llmops.flows.local.server import quiet_prefect_env
from llmops.flows.retrain import retrain as retrain_flow
from llmops.infra.config import ConfigError, PipelineConfig
from llmops.monitoring.records import DriftEvent

CONFIG = PipelineConfig.from_dict({
    "model_name": "deploy-lm",
    "train": {"max_steps": 12, "lr": 0.002},
    "monitor": {"min_samples": 30, "signal_thresholds": {"token_frequency": {"psi_warn": 0.15, "psi_alert": 0.3}}},
    "schedule": {"retrain_cron": "30 2 * * 1-5", "monitor_every_minutes": 15, "timezone": "Europe/Paris",
                 "retrain_delay_minutes": 7.5},
})


@pytest.fixture(scope="module")
def deployments():
    return {d.name: d for d in build_deployments(CONFIG)}


def test_four_deployments_of_the_four_flows(deployments):
    assert list(deployments) == ["train", "monitor", "retrain", "canary"]
    assert {n: d.flow_name for n, d in deployments.items()} == {
        "train": "training-pipeline", "monitor": "monitor-drift", "retrain": "retrain", "canary": "canary-check"}
    assert {n: d.entrypoint for n, d in deployments.items()} == {
        "train": "flows/training_pipeline.py:training_pipeline", "monitor": "flows/monitor_drift.py:monitor_drift",
        "retrain": "flows/retrain.py:retrain", "canary": "flows/canary.py:canary_check"}
    assert all(d.tags == ["llmops"] for d in deployments.values())
    assert deployments["train"].schedules == [] and deployments["train"].triggers == []


def test_every_deployment_carries_the_config_as_its_default_parameter(deployments):
    for deployment in deployments.values():
        assert PipelineConfig.model_validate(deployment.parameters["config"]) == CONFIG
    assert deployments["retrain"].parameters["reason"] == "schedule"
    assert set(deployments["train"].parameters) == set(deployments["monitor"].parameters) == {"config"}


def test_monitor_runs_on_the_configured_interval(deployments):
    (schedule,) = deployments["monitor"].schedules
    assert schedule.active
    assert schedule.schedule.interval == timedelta(minutes=15)
    assert schedule.schedule.timezone == "Europe/Paris"


def test_retrain_has_the_cron_schedule_and_one_run_at_a_time(deployments):
    retrain = deployments["retrain"]
    (schedule,) = retrain.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 2 * * 1-5", "Europe/Paris")
    assert retrain.concurrency_limit == 1
    assert retrain.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW


def test_the_canary_check_runs_only_when_canaries_are_enabled(deployments):
    assert deployments["canary"].schedules == [] and deployments["canary"].triggers == []
    enabled = {d.name: d for d in build_deployments(CONFIG.with_overrides(
        ["serve.canary.enabled=true", "serve.canary.check_every_minutes=5"]))}["canary"]
    (schedule,) = enabled.schedules
    assert schedule.schedule.interval == timedelta(minutes=5)
    (trigger,) = enabled.triggers
    assert trigger.expect == {"llmops.model.canary_started"} and trigger.schedule_after == timedelta(minutes=5)
    assert trigger.match.model_dump() == {"prefect.resource.id": "llmops.model.deploy-lm"}
    assert enabled.concurrency_limit == 1


def test_retrain_is_triggered_by_this_models_drift_event(deployments):
    (trigger,) = deployments["retrain"].triggers
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.expect == {"llmops.drift.detected"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "llmops.model.deploy-lm"}
    assert trigger.posture == "Reactive" and trigger.threshold == 1 and trigger.enabled
    assert trigger.schedule_after == timedelta(minutes=7.5)
    assert trigger.parameters == {
        "reason": "drift", "drift_event_id": "{{ event.id | string }}", "drift": "{{ event.payload }}"}


def test_the_drift_event_reaches_retrain_as_a_typed_parameter(deployments):
    """The trigger's parameters, hydrated as the Prefect server hydrates them against an emitted event, validate as
    retrain's parameters: the payload arrives whole, as a DriftEvent with its signal list and window datetimes."""
    retrain = deployments["retrain"]
    (trigger,) = retrain.triggers
    payload = DriftEvent(model_name="deploy-lm", model_version=3, window_id="w", severity="high",
                         window_start=datetime(2026, 11, 23, 14, tzinfo=timezone.utc),
                         window_end=datetime(2026, 11, 23, 15, tzinfo=timezone.utc),
                         signals=["token_frequency", "prompt_surprisal"], report="s3://b/monitoring/deploy-lm/w")
    event = {"id": "5f1c-event", "payload": payload.model_dump(mode="json")}
    parameters = copy.deepcopy(trigger.parameters)
    RunDeployment._upgrade_v1_templates(parameters)  # what the server does to a stored trigger's parameters
    hydrated = hydrate(parameters, HydrationContext(raise_on_error=True, render_jinja=True,
                                                    jinja_context={"event": event}))
    assert hydrated == {"reason": "drift", "drift_event_id": "5f1c-event", "drift": payload.model_dump(mode="json")}
    bound = retrain_flow.validate_parameters({"config": CONFIG.model_dump(mode="json"), **hydrated})
    assert bound["drift"] == payload and bound["drift_event_id"] == "5f1c-event"


def test_null_schedules_leave_the_deployments_unscheduled():
    config = CONFIG.with_overrides(["schedule.retrain_cron=null", "schedule.monitor_every_minutes=null"])
    built = {d.name: d for d in build_deployments(config)}
    assert built["retrain"].schedules == [] and built["monitor"].schedules == []
    assert len(built["retrain"].triggers) == 1, "the drift trigger does not depend on the cron schedule"
    assert built["retrain"].triggers[0].schedule_after == timedelta(minutes=7.5)


@pytest.mark.parametrize("override, message", [
    ("schedule.retrain_cron=not a cron", 'schedule.retrain_cron: Invalid cron string: "not a cron"'),
    ("schedule.retrain_cron=61 * * * *", 'schedule.retrain_cron: Invalid cron string: "61 * * * *"'),
    ("schedule.timezone=Mars/Olympus", "schedule.timezone: 'Mars/Olympus' is not an IANA time zone"),
])
def test_a_bad_schedule_is_a_config_error_naming_the_field(override, message):
    with pytest.raises(ConfigError) as caught:
        build_deployments(CONFIG.with_overrides([override]))
    assert str(caught.value).startswith(message)


def test_llmops_deploy_reports_a_bad_cron_before_contacting_prefect(capsys, monkeypatch):
    for key, value in {**quiet_prefect_env(), "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))  # main() setdefaults these; undone after the test
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    assert main(["deploy", "--set", "schedule.retrain_cron=every day"]) == 2
    captured = capsys.readouterr()
    assert captured.err == 'llmops deploy: error: schedule.retrain_cron: Invalid cron string: "every day"\n'
