"""The drift check on a local two-worker Dask cluster (``monitor.cluster: dask-local:2``), through Prefect's task
runner: the same statistics, counts, notes and verdict as the single-process check of the same stored window."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store
from llmops.infra.traffic.compaction import compact
from llmops.infra.traffic.log import write_records
from llmops.monitoring import layout
from llmops.monitoring.check import load_report
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records
from llmops.tasks.core.context import cache_dir
from llmops.tasks.core.monitoring import run_drift_check
from tests.helpers import make_registered_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("prefect_api")
T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)


def tokenize(texts):
    return tiny_tokenizer()(list(texts), add_special_tokens=False)["input_ids"]


def stored_window(name: str) -> None:
    """A registered production model and four hours of drifted traffic: one hour compacted, records without token
    ids (the workers load the tokenizer), another version's records, a malformed line."""
    store = open_store()
    reference = synthetic_records(400, seed=1, model=name)
    config = PipelineConfig(model_name=name)
    profile = build_profile(reference, tokenize, config.monitor, model_name=name, model_version=1)
    make_registered_model(store, name, files={"reference_profile.json": profile.to_json()})
    shape = TrafficShape(words_mean=40, vocab_offset=200, surprisal_mean=5.0)
    for h in range(4):
        records = synthetic_records(120, shape, seed=10 + h, start=T0 + timedelta(hours=h), spacing_s=25, model=name)
        for r in records[::9]:
            del r["prompt_token_ids"]
        for r in records[::13]:
            r["version"] = 2
        write_records(store, name, records[:70])
        key = write_records(store, name, records[70:])
    store.put_bytes(key.replace(".jsonl", "-bad.jsonl"), b'{"truncated\n')
    compact(store, name, before=T0 + timedelta(hours=2))  # 14:00 and 15:00 become Parquet


def test_a_two_worker_dask_cluster_gives_the_single_process_statistics():
    from llmops.flows.monitor_drift import monitor_drift

    name = f"cluster-{uuid.uuid4().hex[:8]}"
    stored_window(name)
    # small samples, so the KS reservoirs and the classifier's prompt sample keep a subset: their keys must agree
    config = PipelineConfig(model_name=name).with_overrides([
        "monitor.min_samples=50", "monitor.ks_window_sample=100", "monitor.classifier_window_sample=100",
        "monitor.evidently_report=false", "monitor.compact_traffic=false", "monitor.cluster=dask-local:2"])
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(hours=3, minutes=50)
    outcome = monitor_drift(config, start=start, end=end)
    store = open_store()
    prefix = layout.window_prefix(name, layout.window_id(start, end))
    on_cluster = load_report(store.get_text(f"{prefix}/drift.json"))
    one_process = run_drift_check(store, config, start, end, cache_dir())  # monitor.cluster is not read here
    assert on_cluster.n_samples == one_process.n_samples > 300 and outcome.verdict == on_cluster.verdict == "alert"
    assert signals(on_cluster) == signals(one_process)  # every signal's PSI, KL, JS, KS/chi2, counts, means
    assert all(s.test_sample == 100 for s in on_cluster.signals.values() if s.test == "ks")
    assert on_cluster.classifier.model_dump(exclude={"seconds"}) == one_process.classifier.model_dump(
        exclude={"seconds"})
    assert (on_cluster.skipped, on_cluster.notes) == (one_process.skipped, one_process.notes)
    assert any("1 malformed traffic line" in n for n in on_cluster.notes)
    assert any("other versions left out" in n for n in on_cluster.notes)


def signals(report) -> str:
    return json.dumps({name: s.model_dump() for name, s in report.signals.items()}, sort_keys=True)
