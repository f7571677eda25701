"""llmops deploy --pool: the deployments on a work pool, and a real `prefect worker` (process type) running one."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from llmops.flows.deployments import deploy_to_pool
from llmops.infra.config import PipelineConfig

pytestmark = pytest.mark.usefixtures("prefect_api")

POOL = "llmops-test-process"


def test_deployments_on_a_work_pool_run_on_its_worker(tmp_path):
    config = PipelineConfig(model_name="pool-lm").with_overrides(["serve.canary.enabled=true"])
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    ids = deploy_to_pool(config, POOL)
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in (client.read_deployment(i) for i in ids)}
    assert set(deployments) == {"train", "monitor", "retrain", "canary"}
    assert all(d.work_pool_name == POOL for d in deployments.values())
    assert deployments["canary"].entrypoint == "llmops.flows.canary.canary_check"  # no source to pull: installed
    assert deployments["retrain"].global_concurrency_limit.limit == 1 and deployments["monitor"].schedules
    assert PipelineConfig.model_validate(deployments["train"].parameters["config"]) == config

    run = run_deployment("canary-check/canary", timeout=0)  # scheduled now; only a worker can run it
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--run-once"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run.id).state).is_final() and time.monotonic() < deadline:
            time.sleep(1)
    assert state.is_completed(), f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"


def test_the_committed_prefect_yaml_is_the_default_deployments_and_prefect_deploy_creates_them(tmp_path):
    from pathlib import Path

    import yaml

    from llmops.flows.deployments import prefect_yaml

    committed = Path(__file__).parents[2] / "prefect.yaml"
    assert committed.read_text() == prefect_yaml(PipelineConfig(), "llmops"), \
        "prefect.yaml is stale: regenerate it with `llmops deploy --prefect-yaml prefect.yaml`"
    name = "yaml-lm"
    spec = yaml.safe_load(prefect_yaml(PipelineConfig(model_name=name), POOL))
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(spec))
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with get_client(sync_client=True) as client:
        got = {n: client.read_deployment_by_name(n) for n in ("training-pipeline/train", "monitor-drift/monitor",
                                                              "retrain/retrain", "canary-check/canary")}
        automations = client.read_automations_by_name(f"retrain-{name}-on-drift")
    assert all(d.work_pool_name == POOL for d in got.values())
    assert got["retrain/retrain"].schedules[0].schedule.cron == "0 3 * * 0"
    assert got["monitor-drift/monitor"].schedules[0].schedule.interval.total_seconds() == 3600
    assert got["retrain/retrain"].global_concurrency_limit.limit == 1
    assert got["retrain/retrain"].concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert PipelineConfig.model_validate(got["training-pipeline/train"].parameters["config"]).model_name == name
    (automation,) = automations
    assert automation.trigger.expect == {"llmops.drift.detected"}
    assert automation.actions[0].parameters["drift"] == "{{ event.payload }}", "the event template is kept"


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_the_shipped_job_templates_make_pools_and_training_goes_to_the_gpu_pool(kind):
    import json
    from pathlib import Path

    from prefect.exceptions import PrefectHTTPStatusError

    template = json.loads((Path(__file__).parents[2] / "infra" / "pools" / f"{kind}.json").read_text())
    assert "image" in template["variables"]["properties"], "a docker-based pool: deployments need no storage"
    with get_client(sync_client=True) as client:  # the API checks the template's placeholders against its variables
        client.create_work_pool(WorkPoolCreate(name=f"cpu-{kind}", type=kind, base_job_template=template),
                                overwrite=True)
        client.create_work_pool(WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=json.loads(
            (Path(__file__).parents[2] / "infra" / "pools" / "kubernetes.json").read_text())), overwrite=True)
    config = PipelineConfig(model_name=f"gpu-{kind}")
    ids = deploy_to_pool(config, f"cpu-{kind}", "gpu-k8s", {"gpu_count": 1})
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in (client.read_deployment(i) for i in ids)}
    assert {n: d.work_pool_name for n, d in deployments.items()} == {
        "monitor": f"cpu-{kind}", "canary": f"cpu-{kind}", "train": "gpu-k8s", "retrain": "gpu-k8s"}
    assert deployments["train"].job_variables == {"gpu_count": 1} and not deployments["monitor"].job_variables
    with pytest.raises(PrefectHTTPStatusError, match="-1 is less than the minimum of 0"):
        deploy_to_pool(config, f"cpu-{kind}", "gpu-k8s", {"gpu_count": -1})  # the template's minimum is 0
