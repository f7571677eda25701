"""Against a real Prefect API: the train task's progress artifact, keyed by the run, ends at 100% on its task run."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterName,
)

from llmops.infra.config import PipelineConfig
from llmops.tasks.ingestion import ingest_data
from llmops.tasks.tokenization import build_tokenizer_task, pack_data
from llmops.tasks.training import train_model

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")


@flow(name="train-progress-test")
def ingest_and_train(config: PipelineConfig):
    dataset = ingest_data(config.data, config.model_name)
    tokenizer = build_tokenizer_task(config.tokenizer, dataset, config.model)
    packed = pack_data(dataset, tokenizer, config.train.block_size)
    return train_model(packed, tokenizer, config.model, config.train)


def train_task_run(client, flow_run_id, timeout: float = 30.0):
    """Task runs reach the API through events, so the train task's record may lag its flow run's return."""
    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="train-model-")))
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def test_train_task_progress_artifact_is_keyed_by_run_and_reaches_100():
    config = PipelineConfig.from_yaml(Path(__file__).parents[2] / "configs" / "tiny.yaml").with_overrides([
        f"model_name=progress-{uuid.uuid4().hex[:8]}", "data.sources=['builtin://stdlib-docstrings?max_bytes=60000']",
        "train.max_steps=6", "train.warmup_steps=1", "train.eval_every=3", "train.checkpoint_every=3",
    ])
    state = ingest_and_train(config, return_state=True)
    run, flow_run_id = state.result(), state.state_details.flow_run_id
    assert run.steps == 6 and run.resumed_from_step is None, "the run must train here, not reuse a stored one"

    with get_client(sync_client=True) as client:
        [task_run] = train_task_run(client, flow_run_id)
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(
            type=ArtifactFilterType(any_=["progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        [latest] = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[f"train-progress-{run.run_id}"])))
    [artifact] = progress
    assert artifact.key == f"train-progress-{run.run_id}" and artifact.task_run_id == task_run.id
    assert artifact.data == 100.0 and artifact.updated > artifact.created, "created at 0, updated to completion"
    assert latest.latest_id == artifact.id and latest.data == 100.0, "the Artifacts page shows the finished value"
