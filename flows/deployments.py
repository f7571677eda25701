"""Deployment definitions: the pipeline, the scheduled drift check, retraining on a cron and on drift events, and
the canary check."""
from __future__ import annotations

from datetime import timedelta
from typing import Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import prefect
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval

from llmops.flows.canary import canary_check
from llmops.flows.monitor_drift import monitor_drift
from llmops.flows.retrain import retrain
from llmops.flows.training_pipeline import training_pipeline
from llmops.infra.config import ConfigError, PipelineConfig
from llmops.tasks.core.context import ACCELERATOR_TAG, CANARY_STARTED, model_resource
from llmops.tasks.core.monitoring import DRIFT_EVENT


def _on_model_event(config: PipelineConfig, name: str, event: str, description: str, after_minutes: float,
                    parameters: Optional[dict] = None) -> DeploymentEventTrigger:
    """A trigger on ``event`` for this model's resource, ``after_minutes`` after it."""
    return DeploymentEventTrigger(
        name=name, description=description, expect={event},
        match={"prefect.resource.id": model_resource(config.model_name)["prefect.resource.id"]},
        schedule_after=timedelta(minutes=after_minutes), parameters=parameters,
    )


def drift_trigger(config: PipelineConfig) -> DeploymentEventTrigger:
    """Start ``retrain`` on this model's drift events, passing the event's id and payload as parameters."""
    # a single-expression template keeps its JSON type: the flow receives the payload as a DriftEvent
    return _on_model_event(
        config, f"retrain-{config.model_name}-on-drift", DRIFT_EVENT,
        f"Retrain {config.model_name} when monitoring emits {DRIFT_EVENT}", config.schedule.retrain_delay_minutes,
        {"reason": "drift", "drift_event_id": "{{ event.id | string }}", "drift": "{{ event.payload }}"},
    )


def canary_trigger(config: PipelineConfig) -> DeploymentEventTrigger:
    """Check the canary ``serve.canary.check_every_minutes`` after a promotion makes one."""
    return _on_model_event(config, f"check-{config.model_name}-canary", CANARY_STARTED,
                           f"Check {config.model_name}'s canary after {CANARY_STARTED}",
                           config.serve.canary.check_every_minutes)


def _schedules(config: PipelineConfig) -> tuple[list, list]:
    """(monitor, retrain) schedules; a bad time zone or cron is a ConfigError naming the field, not a traceback."""
    sched = config.schedule
    try:
        ZoneInfo(sched.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"schedule.timezone: {sched.timezone!r} is not an IANA time zone "
                          "(e.g. UTC, Europe/Paris)") from None
    try:
        retrain = [Cron(sched.retrain_cron, timezone=sched.timezone)] if sched.retrain_cron else []
    except ValueError as exc:
        raise ConfigError(f"schedule.retrain_cron: {exc}") from None
    monitor = ([Interval(timedelta(minutes=sched.monitor_every_minutes), timezone=sched.timezone)]
               if sched.monitor_every_minutes else [])
    return monitor, retrain


def build_deployments(config: PipelineConfig, entrypoint_type: EntrypointType = EntrypointType.FILE_PATH) -> list:
    """Runner deployments carrying ``config`` as their default parameters (the UI renders it as a form).

    ``entrypoint_type=MODULE_PATH`` (``llmops.flows.retrain.retrain``) for a work pool: any worker where llmops is
    installed (a container image, a virtualenv) runs them, with no source to pull."""
    params = {"config": config.model_dump(mode="json")}
    common = {"tags": ["llmops"], "entrypoint_type": entrypoint_type}
    monitor_schedules, retrain_schedules = _schedules(config)
    canary = config.serve.canary
    canary_schedules = ([Interval(timedelta(minutes=canary.check_every_minutes), timezone=config.schedule.timezone)]
                        if canary.enabled and canary.check_every_minutes else [])
    # One at a time, the newcomer cancelled rather than queued. Retrain: a burst of drift events must not become
    # a series of retrains (persistent drift re-emits after the cooldown). Monitor: two overlapping checks would
    # both read the cooldown state before either wrote it; a skipped check is redone at the next interval.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return [
        training_pipeline.to_deployment(
            name="train", parameters=params, **common,
            description="Run the whole training pipeline on demand.",
        ),
        monitor_drift.to_deployment(
            name="monitor", parameters=params, **common,
            schedules=monitor_schedules, concurrency_limit=one_at_a_time,
            description="Check the latest traffic window for drift; emits llmops.drift.detected on alert.",
        ),
        retrain.to_deployment(
            name="retrain", parameters={**params, "reason": "schedule"}, **common,
            schedules=retrain_schedules,
            triggers=[drift_trigger(config)], concurrency_limit=one_at_a_time,
            description="Retrain through the gate, on a schedule and on drift.",
        ),
        canary_check.to_deployment(
            name="canary", parameters=params, **common, schedules=canary_schedules,
            triggers=[canary_trigger(config)] if canary.enabled else [], concurrency_limit=one_at_a_time,
            description="Promote the canary or roll it back on the traffic each version served (serve.canary).",
        ),
    ]


def limit_accelerator() -> int:
    """Let one task holding the accelerator (``train-model``) run at a time across every flow run on this Prefect
    API: a manual train and a drift retrain queue rather than share a GPU. Returns the limit (created once, kept as
    it is when it exists: an operator may have raised it for a node with several GPUs)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_concurrency_limit_by_tag(ACCELERATOR_TAG).concurrency_limit
        except ObjectNotFound:
            client.create_concurrency_limit(tag=ACCELERATOR_TAG, concurrency_limit=1)
            return 1


# the deployments that train, which a separate (GPU) work pool may run
TRAINING = ("train", "retrain")


def pool_groups(config: PipelineConfig, pool: str, train_pool: Optional[str] = None,
                train_job_variables: Optional[dict] = None) -> list[tuple[str, list]]:
    """(work pool, its deployments): every deployment on ``pool``, or ``train`` and ``retrain`` on ``train_pool``
    with ``train_job_variables`` (e.g. ``{"gpu_count": 1}`` for infra/pools/kubernetes.json)."""
    deployments = build_deployments(config, EntrypointType.MODULE_PATH)
    if not train_pool:
        return [(pool, deployments)]
    training = [d for d in deployments if d.name in TRAINING]
    for d in training:
        d.job_variables = dict(train_job_variables or {})
    return [(pool, [d for d in deployments if d.name not in TRAINING]), (train_pool, training)]


def deploy_to_pool(config: PipelineConfig, pool: str, train_pool: Optional[str] = None,
                   train_job_variables: Optional[dict] = None) -> list[str]:
    """Create (or update) the deployments on the Prefect API against work pool ``pool`` (``train`` and ``retrain``
    on ``train_pool`` when given), whose workers run them; return their ids. The pools must exist
    (``prefect work-pool create NAME --type process``, or ``--type docker|kubernetes --base-job-template
    infra/pools/<type>.json``); the API checks ``train_job_variables`` against the pool's template, and a refusal
    is raised (``prefect.deploy`` would only print it)."""
    limit_accelerator()
    return [str(d.apply(work_pool_name=name))
            for name, group in pool_groups(config, pool, train_pool, train_job_variables) for d in group]


def serve_deployments(config: PipelineConfig) -> None:
    """Register the deployments with the configured Prefect API and run their flows here, until SIGINT or SIGTERM.

    Stopping leaves the deployments as they are. Prefect's default (``pause_on_shutdown``) pauses each of them on
    the way out, which stops their schedules on the API for everyone (the UI, another runner) until a serve applies
    them again: a restart, a ``docker stop`` or a rolling redeploy must not do that.
    """
    from prefect import serve

    limit_accelerator()
    serve(*build_deployments(config), pause_on_shutdown=False, print_starting_message=True)


def prefect_yaml(config: PipelineConfig, pool: str, train_pool: Optional[str] = None,
                 train_job_variables: Optional[dict] = None) -> str:
    """A ``prefect.yaml`` declaring the deployments of :func:`pool_groups`, for ``prefect deploy --all``.
    Module-path entrypoints and no pull step: a worker where llmops is installed runs them. Every deployment shares
    one copy of ``config`` (a YAML anchor) as its default parameter."""
    import yaml

    shared = config.model_dump(mode="json")
    entries = []
    for pool_name, group in pool_groups(config, pool, train_pool, train_job_variables):
        for d in group:
            work_pool = {"name": pool_name, **({"job_variables": d.job_variables} if d.job_variables else {})}
            entry = {"name": d.name, "description": d.description, "entrypoint": d.entrypoint, "tags": d.tags,
                     "work_pool": work_pool, "parameters": {**d.parameters, "config": shared},
                     "schedules": [_schedule_yaml(s.schedule) for s in d.schedules]}
            if d.concurrency_limit:
                entry["concurrency_limit"] = {"limit": d.concurrency_limit,
                                              "collision_strategy": d.concurrency_options.collision_strategy.value}
            if d.triggers:
                entry["triggers"] = [t.model_dump(mode="json", exclude_none=True) for t in d.triggers]
            entries.append(entry)

    class Dumper(yaml.SafeDumper):
        """Only the shared configuration becomes an anchor, named ``config``."""

        def ignore_aliases(self, data) -> bool:
            return data is not shared

        def generate_anchor(self, node) -> str:
            return "config"

    pools = f"work pools {pool!r} and {train_pool!r} (train, retrain)" if train_pool else f"work pool {pool!r}"
    header = (f"# Generated by `llmops deploy --prefect-yaml` from the configuration of model {config.model_name!r};\n"
              f"# `prefect deploy --all` creates these deployments on {pools}.\n")
    body = {"name": "llmops", "prefect-version": prefect.__version__, "build": None, "push": None, "pull": [],
            "deployments": entries}
    return header + yaml.dump(body, Dumper=Dumper, sort_keys=False, width=120)


def _schedule_yaml(schedule) -> dict:
    if getattr(schedule, "cron", None):
        return {"cron": schedule.cron, "timezone": schedule.timezone, "active": True}
    return {"interval": schedule.interval.total_seconds(), "timezone": schedule.timezone, "active": True}

