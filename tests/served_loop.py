"""Parts of the drift -> retrain loop tests that run against a real ``prefect server start`` and an ``llmops deploy``
runner (tests/e2e/test_scheduled_loop.py on SQLite, tests/integration/test_postgres_server.py on PostgreSQL): a
configuration fast enough for 2 cores, polling through the Prefect client, and drifted traffic."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterCreatedBy
from prefect.client.schemas.objects import FlowRun

from llmops.infra.config import PipelineConfig
from llmops.infra.settings import get_settings
from llmops.infra.store import open_store

ROOT = Path(__file__).parents[1]
T = TypeVar("T")
# fast enough for a test on 2 cores: a 15 s schedule, a small model, no companion reports. The 30 s review
# window (schedule_after) keeps the retrain, and its possible promotion, after the second scheduled check.
OVERRIDES = [
    'data.sources=["builtin://stdlib-docstrings?max_bytes=200000", "traffic://"]', "data.val_fraction=0.2",
    "train.max_steps=20", "eval.max_docs=20", "compress.variants=[]", "serve.default_max_tokens=4",
    "monitor.reference_size=100", "monitor.min_samples=40", "monitor.window_minutes=10",
    "monitor.cooldown_minutes=60", "monitor.evidently_report=false",
    "schedule.monitor_every_minutes=0.25", "schedule.retrain_cron=null", "schedule.retrain_delay_minutes=0.5",
]


def poll(what: str, probe: Callable[[], T], timeout: float, every: float = 1.0) -> T:
    """``probe()`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def runs_of(client, deployment_id, automation: bool = False) -> list[FlowRun]:
    """The deployment's flow runs, oldest first; ``automation``: only those a trigger created."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(created_by=FlowRunFilterCreatedBy(type_=["AUTOMATION"])) if automation else None,
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
    )
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def deployment(client, name: str):
    """The deployment ``flow/deployment``, or None while the runner has not registered it."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def final_runs(runs: list[FlowRun]) -> list[FlowRun]:
    return [r for r in runs if r.state is not None and r.state.is_final()]


def drifted_traffic(config: PipelineConfig, n: int = 80) -> list[dict]:
    """Python source prompts (the model was trained on docstrings), captured as the server captures them."""
    from llmops.models.data.corpus import stdlib_code
    from llmops.models.model.reference import reference_records
    from llmops.models.release.registry import Registry
    from llmops.tasks.core.monitoring import serving_params

    loaded = Registry(open_store(), config.model_name).load("production", cache_dir=get_settings().cache_dir)
    code = [d.text for d in stdlib_code(max_bytes=400_000) if 40 <= len(d.text) <= 1500][:n]
    return reference_records(loaded.model, loaded.tokenizer, code, params=serving_params(config),
                             model_name=config.model_name, version=loaded.version, latency_samples=0)
