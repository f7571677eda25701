"""Deployment definitions, built without a Prefect server: names, schedules, the drift trigger, concurrency, parameters."""
from __future__ import annotations

import inspect
import os
from datetime import timedelta

import jinja2
import pytest
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger

from llmops.flows.cli import main
from llmops.flows.deployments import build_deployments
from llmops.flows.local.server import quiet_prefect_env
from llmops.flows.retrain import retrain as retrain_flow
from llmops.infra.config import ConfigError, PipelineConfig

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


def test_three_deployments_of_the_three_flows(deployments):
    assert list(deployments) == ["train", "monitor", "retrain"]
    assert {n: d.flow_name for n, d in deployments.items()} == {
        "train": "training-pipeline", "monitor": "monitor-drift", "retrain": "retrain"}
    assert {n: d.entrypoint for n, d in deployments.items()} == {
        "train": "flows/training_pipeline.py:training_pipeline", "monitor": "flows/monitor_drift.py:monitor_drift",
        "retrain": "flows/retrain.py:retrain"}
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


def test_retrain_is_triggered_by_this_models_drift_event(deployments):
    (trigger,) = deployments["retrain"].triggers
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.expect == {"llmops.drift.detected"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "llmops.model.deploy-lm"}
    assert trigger.posture == "Reactive" and trigger.threshold == 1 and trigger.enabled
    assert trigger.schedule_after == timedelta(minutes=7.5)
    assert trigger.parameters == {
        "reason": "drift",
        "drift_event_id": "{{ event.id | string }}",
        "drift_window": "{{ event.payload.window_start }} .. {{ event.payload.window_end }}",
        "drift_signals": "{{ event.payload.signals }}",
        "drift_severity": "{{ event.payload.severity }}",
    }


def test_trigger_parameters_are_retrain_parameters_and_render_from_a_drift_event(deployments):
    retrain = deployments["retrain"]
    (trigger,) = retrain.triggers
    assert set(trigger.parameters) <= set(inspect.signature(retrain_flow.fn).parameters)
    # The server renders these with Jinja against the event; an event shaped like decide_drift_event's payload:
    event = {"id": "5f1c-event", "payload": {"window_start": "2026-11-23T14:00:00+00:00",
                                             "window_end": "2026-11-23T15:00:00+00:00",
                                             "signals": "token_frequency,prompt_surprisal", "severity": "high"}}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    rendered = {k: env.from_string(v).render(event=event) for k, v in trigger.parameters.items()}
    assert rendered == {"reason": "drift", "drift_event_id": "5f1c-event",
                        "drift_window": "2026-11-23T14:00:00+00:00 .. 2026-11-23T15:00:00+00:00",
                        "drift_signals": "token_frequency,prompt_surprisal", "drift_severity": "high"}


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
