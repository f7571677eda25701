"""``monitor.cluster`` becomes a Prefect task runner: prefect-dask's, on a temporary LocalCluster or a running
scheduler; ``local`` has none (the check stays one task in one process)."""
from __future__ import annotations

import pytest
from prefect_dask import DaskTaskRunner

from llmops.tasks.monitoring import cluster_task_runner


def test_dask_local_starts_a_local_cluster_of_single_threaded_worker_processes():
    runner = cluster_task_runner("dask-local:3")
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True,
                                     "dashboard_address": None}


def test_an_address_connects_to_a_running_scheduler():
    runner = cluster_task_runner("tcp://scheduler.internal:8786")
    assert runner.address == "tcp://scheduler.internal:8786" and runner.cluster_class is None


def test_local_and_unknown_settings_have_no_runner():
    with pytest.raises(ValueError, match="one process"):
        cluster_task_runner("local")
    with pytest.raises(ValueError, match="monitor.cluster must be"):
        cluster_task_runner("ray://head:10001")
