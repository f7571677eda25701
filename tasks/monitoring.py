"""Monitor stage: the reference profile at training time, compaction, the drift check of a window (in one task, or
mapped over the window's hour partitions on a cluster), the drift event."""
from __future__ import annotations

import functools
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.task_runners import TaskRunner

from llmops.infra.config import PipelineConfig
from llmops.infra.config.monitoring import parse_cluster
from llmops.infra.store import ArtifactNotFound, ArtifactStore, open_store
from llmops.models.model import load_tokenizer
from llmops.models.records import CompressionReport, DatasetRef, ProfileRef, TrainRef
from llmops.models.release import Registry
from llmops.monitoring import layout, partition
from llmops.monitoring.batch import Tokenize
from llmops.monitoring.check import finish_merged, validate_config, window_accumulator
from llmops.monitoring.policy import DriftEventLedger
from llmops.monitoring.records import DriftEvent, DriftOutcome, DriftReport, LedgerEntry, ReferenceProfile, Trend
from llmops.monitoring.report import render_summary
from llmops.monitoring.semantic import embedder_for
from llmops.monitoring.trend import trend
from llmops.tasks.core.context import artifact_key, cache_dir, link, model_resource, store, timeout_s
from llmops.tasks.core.monitoring import (
    DRIFT_EVENT,
    compact_closed_hours,
    reference_profile,
    run_drift_check,
    tokenize_with,
)


@task(name="build-reference-profile", timeout_seconds=timeout_s("build-reference-profile"))
def build_reference_profile(run: TrainRef, dataset: DatasetRef, config: PipelineConfig, version: int,
                            compression: Optional[CompressionReport] = None) -> ProfileRef:
    """Validation documents, served-size, through the model's own scoring and generation, profiled for ``version``."""
    ref = reference_profile(store(), run, dataset, config, version, cache_dir(), compression)
    get_run_logger().info("reference profile of v%d: %d validation documents, %d signals", version, ref.records,
                          len(ref.signals))
    return ref


@task(name="compact-traffic", retries=1, timeout_seconds=timeout_s("compact-traffic"))
def compact_traffic(config: PipelineConfig, now: Optional[datetime] = None) -> list[str]:
    """Compact the model's closed traffic hours (within ``monitor.compact_lookback_hours``) into Parquet."""
    _, keys = compact_closed_hours(store(), config, now or datetime.now(timezone.utc))
    get_run_logger().info("compacted %d closed traffic hour(s) of %s", len(keys), config.model_name)
    return keys


@task(name="check-drift", timeout_seconds=timeout_s("check-drift"))
def check_drift(config: PipelineConfig, start: datetime, end: datetime) -> DriftReport:
    """The window's check in this task's process (``monitor.cluster: local``)."""
    return _published(config, run_drift_check(store(), config, start, end, cache_dir()))


def _published(config: PipelineConfig, report: DriftReport) -> DriftReport:
    """The verdict as a markdown artifact (its files linked) and a log line."""
    create_markdown_artifact(render_summary(report, link_for=lambda name: link(f"{report.out_dir.rstrip('/')}/{name}")),
                             key=artifact_key(config.model_name, "drift"),
                             description=f"drift verdict: {report.verdict}")
    get_run_logger().info("window %s: %s (severity %s), %d records; alerting: %s", report.window_id, report.verdict,
                          report.severity, report.n_samples, report.alerting or "none")
    return report


def cluster_task_runner(cluster: str) -> TaskRunner:
    """The Prefect task runner ``monitor.cluster`` names (not ``local``): prefect-dask's, on a temporary LocalCluster
    of worker processes (one thread each: the accumulation holds the GIL between numpy calls) or a running scheduler.
    """
    from prefect_dask import DaskTaskRunner  # imported only when a cluster is configured: the default needs no Dask

    spec = parse_cluster(cluster)
    if spec.kind == "local":
        raise ValueError("monitor.cluster 'local' runs the check in one process, without a task runner")
    if spec.kind == "dask":
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": spec.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@task(name="plan-drift-check", timeout_seconds=timeout_s("plan-drift-check"))
def plan_drift_check(config: PipelineConfig, start: datetime, end: datetime) -> partition.WindowPlan:
    """The production version, its reference profile and the window's hour partitions, named for the workers."""
    validate_config(config.monitor)
    st, name = store(), config.model_name
    version = Registry(st, name).resolve(config.serve.alias)
    key = f"{Registry(st, name).root}/versions/{version}/reference_profile.json"
    profile = _profile(st.uri, key)
    semantic = profile.semantic is not None and config.monitor.semantic_model is not None
    return partition.WindowPlan(
        store_uri=st.uri, model=name, version=version, start=start, end=end,
        window_id=layout.window_id(start, end), partitions=partition.window_partition_prefixes(name, start, end),
        profile_key=key, sample_size=config.monitor.ks_window_sample,
        prompt_sample=partition.prompt_sample_size(profile, config.monitor, semantic))


@task(name="accumulate-partition", timeout_seconds=timeout_s("accumulate-partition"), cache_policy=NO_CACHE,
      persist_result=False)
def accumulate_partition(plan: partition.WindowPlan, prefix: str) -> partition.PartitionPartial:
    """Read and accumulate one hour partition of the window where the task runs (a Dask worker): the store and the
    profile by name, the tokenizer only if a record lacks token ids."""
    st = open_store(plan.store_uri)
    partial = partition.accumulate_partition(
        st, prefix, plan.start, plan.end, _profile(plan.store_uri, plan.profile_key),
        _registry_tokenize(st, plan.model, plan.version), version=plan.version, sample_size=plan.sample_size,
        prompt_sample=plan.prompt_sample, chunk_bytes=plan.chunk_bytes)
    get_run_logger().info("%s: %d records from %d file(s)", prefix, partial.scan.records, len(partial.scan.files))
    return partial


@task(name="finish-drift-check", timeout_seconds=timeout_s("finish-drift-check"), cache_policy=NO_CACHE)
def finish_drift_check(config: PipelineConfig, plan: partition.WindowPlan,
                       partials: list[partition.PartitionPartial]) -> DriftReport:
    """Merge the partitions' partials; then statistics, verdict and files as check-drift writes them."""
    st = store()
    profile = _profile(plan.store_uri, plan.profile_key)
    embedder = embedder_for(config.monitor, profile.semantic) if profile.semantic is not None else None
    merged = partition.merge_partials(window_accumulator(profile, config.monitor, embedder), partials,
                                      plan.prompt_sample)
    prefix = layout.window_prefix(plan.model, plan.window_id)
    local = st.local_path(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = local if local is not None else Path(tmp)
        report = finish_merged(profile, merged, config.monitor, out_dir, has_tokenizer=True, window_id=plan.window_id,
                               start=plan.start, end=plan.end)
        if local is None:
            st.upload_dir(out_dir, prefix)
    return _published(config, report.model_copy(update={"out_dir": st.uri_for(prefix)}))


@functools.lru_cache(maxsize=8)  # per worker process: a registered version's files never change
def _profile(store_uri: str, key: str) -> ReferenceProfile:
    try:
        return ReferenceProfile.from_json(open_store(store_uri).get_bytes(key))
    except ArtifactNotFound:
        raise ArtifactNotFound(f"no reference profile at {store_uri}/{key}: the version was registered without "
                               "monitoring") from None


def _registry_tokenize(st: ArtifactStore, name: str, version: int) -> Tokenize:
    """The version's tokenizer in monitoring's batch form, downloaded and loaded on its first call only."""
    @functools.cache
    def loaded() -> Tokenize:
        return tokenize_with(load_tokenizer(Registry(st, name).download(version, cache_dir())))

    return lambda texts: loaded()(texts)


def publish_trend(st: ArtifactStore, name: str) -> tuple[str, Trend]:
    """PSI per signal over every stored window, as trend.md + trend.png in ``monitoring/<model>/trend/``, and a
    table artifact. Returns the URI of trend.md and the trend itself (its verdicts are the policy's history)."""
    prefix = layout.trend_prefix(name)
    with tempfile.TemporaryDirectory() as tmp:
        result = trend(st, name, out_dir=Path(tmp))
        st.upload_dir(tmp, prefix)
    create_table_artifact(
        [{"window": p.window_id, "verdict": p.verdict, "n": p.n_samples,
          **{s: round(p.psi[s], 3) for s in result.signals if s in p.psi}} for p in result.points],
        key=artifact_key(name, "drift-trend"), description="PSI per signal over the checked windows",
    )
    return st.uri_for(f"{prefix}/trend.md"), result


@task(name="decide-drift-event", timeout_seconds=timeout_s("decide-drift-event"))
def decide_drift_event(config: PipelineConfig, report: DriftReport) -> DriftOutcome:
    """Apply debounce and cooldown over the stored windows; emit ``llmops.drift.detected`` when they allow."""
    st, name, now = store(), config.model_name, datetime.now(timezone.utc)
    # the trend of every stored window, this one included, is both the policy's history and a published report
    trend_uri, history = publish_trend(st, name)
    ledger = DriftEventLedger(st, name)
    emit, reason = ledger.decide([p.verdict for p in history.points] or [report.verdict], config.monitor, now)
    if emit:
        payload = DriftEvent(model_name=name, model_version=report.model_version, window_id=report.window_id,
                             window_start=report.start, window_end=report.end, severity=report.severity,
                             signals=report.alerting, report=report.out_dir)
        event = emit_event(event=DRIFT_EVENT, payload=payload.model_dump(mode="json"),
                           resource=model_resource(name))
        ledger.record(LedgerEntry(at=now, window_id=report.window_id, event_id=str(event.id) if event else None))
    get_run_logger().info("drift event: %s (%s)", "emitted" if emit else "not emitted", reason)
    return DriftOutcome.of(report, trend_uri=trend_uri, event_emitted=emit, event_reason=reason)
