"""Monitor stage: the reference profile at training time, compaction, the drift check of a window, the drift event."""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactStore
from llmops.models.records import CompressionReport, DatasetRef, ProfileRef, TrainRef
from llmops.monitoring import layout
from llmops.monitoring.policy import DriftEventLedger
from llmops.monitoring.records import DriftEvent, DriftOutcome, DriftReport, LedgerEntry, Trend
from llmops.monitoring.report import render_summary
from llmops.monitoring.trend import trend
from llmops.tasks.core.context import artifact_key, cache_dir, link, model_resource, store, timeout_s
from llmops.tasks.core.monitoring import DRIFT_EVENT, compact_closed_hours, reference_profile, run_drift_check


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
    report = run_drift_check(store(), config, start, end, cache_dir())
    create_markdown_artifact(render_summary(report, link_for=lambda name: link(f"{report.out_dir.rstrip('/')}/{name}")),
                             key=artifact_key(config.model_name, "drift"),
                             description=f"drift verdict: {report.verdict}")
    get_run_logger().info("window %s: %s (severity %s), %d records; alerting: %s", report.window_id, report.verdict,
                          report.severity, report.n_samples, report.alerting or "none")
    return report


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
