"""pack-data inside a flow that logs prints: the run log holds the task's own lines, not dill's disassembly.

datasets fingerprints its map function with dill, which reads the function's globals from ``dis.dis``
printed to a captured stdout; a task that inherits ``log_prints`` would send that print to the run log.
"""
from __future__ import annotations

import json

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from llmops.infra.config import DataConfig, TokenizerConfig
from llmops.infra.store import open_store
from llmops.models.data import build_tokenizer, ingest, read_split
from llmops.models.records import DatasetRef, PackedRef, TokenizerRef
from llmops.tasks.core.context import cache_dir
from llmops.tasks.tokenization import pack_data
from tests.helpers import drain_prefect_workers, stdlib_texts


@flow(log_prints=True)
def pack_in_a_printing_flow(dataset: DatasetRef, tokenizer: TokenizerRef) -> PackedRef:
    return pack_data(dataset, tokenizer, 32)


def test_pack_data_logs_its_result_and_no_bytecode(prefect_api, tmp_path):
    store, source = open_store(), tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts()), encoding="utf-8")
    dataset = ingest(DataConfig(sources=[str(source)]), store, model_name="lm", cache_dir=cache_dir())
    tokenizer = build_tokenizer(store, TokenizerConfig(vocab_size=300), dataset, read_split(store, dataset, "train"))

    state = pack_in_a_printing_flow(dataset, tokenizer, return_state=True)
    assert state.is_completed() and state.result().blocks["train"] > 0
    drain_prefect_workers()  # the run's logs reach the API before they are read
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))]
    assert any(m.startswith("packed {") for m in logs), logs
    assert not [m for m in logs if "LOAD_GLOBAL" in m or "RETURN_VALUE" in m]
