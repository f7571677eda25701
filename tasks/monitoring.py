"""Monitor stage: the reference profile at training time, the drift check of a traffic window, the drift event."""
from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactNotFound, ArtifactStore
from llmops.infra.traffic.compaction import closed_before, compact
from llmops.models.data.snapshot import read_split
from llmops.models.model.generation import SamplingParams
from llmops.models.model.loading import download_run_model
from llmops.models.model.reference import reference_records
from llmops.models.records import DatasetRef, TrainRef
from llmops.models.release.registry import Registry
from llmops.monitoring.policy import emission_decision
from llmops.monitoring.profile import build_profile
from llmops.monitoring.records import DriftOutcome, DriftReport, ReferenceProfile, Trend
from llmops.monitoring.report import render_summary
from llmops.monitoring.semantic import check_store_window_semantic, embedder_for
from llmops.monitoring.trend import trend
from llmops.monitoring.window import check_store_window
from llmops.tasks.core.context import artifact_key, cache_dir, link, store

DRIFT_EVENT = "llmops.drift.detected"


def tokenize_with(tokenizer: PreTrainedTokenizerBase):
    return lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def serving_params(config: PipelineConfig) -> SamplingParams:
    """What a request with the server's defaults samples with: the reference must look like such traffic."""
    return SamplingParams(max_new_tokens=config.serve.default_max_tokens, do_sample=True, temperature=1.0)


@task(name="build-reference-profile")
def build_reference_profile(run: TrainRef, dataset: DatasetRef, config: PipelineConfig, version: int) -> str:
    """Validation documents, served-size, through the model's own scoring and generation, profiled (JSON)."""
    st = store()
    local = download_run_model(st, run, cache_dir())
    model = AutoModelForCausalLM.from_pretrained(local, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(local)
    texts = [t for t in read_split(st, dataset, "validation") if len(t) <= config.serve.max_prompt_chars]
    prompts = random.Random(0).sample(texts, min(len(texts), config.monitor.reference_size))
    records = reference_records(model, tokenizer, prompts, params=serving_params(config),
                                model_name=config.model_name, version=version)
    profile = build_profile(records, tokenize_with(tokenizer), config.monitor, model_name=config.model_name,
                            model_version=version, embedder=embedder_for(config.monitor))
    get_run_logger().info("reference profile: %d validation documents, %d signals", len(records), len(profile.signals))
    return profile.to_json()


@task(name="compact-traffic", retries=1)
def compact_traffic(config: PipelineConfig, now: Optional[datetime] = None) -> list[str]:
    """Compact the model's closed traffic hours (within ``monitor.compact_lookback_hours``) into Parquet."""
    cfg = config.monitor
    before = closed_before(now or datetime.now(timezone.utc), timedelta(minutes=cfg.compact_grace_minutes),
                           config.serve.flush_interval_s)
    keys = compact(store(), config.model_name, before, since=before - timedelta(hours=cfg.compact_lookback_hours),
                   delete_jsonl=cfg.compact_delete_jsonl)
    get_run_logger().info("compacted %d closed traffic hour(s) of %s", len(keys), config.model_name)
    return keys


def store_window_id(start: datetime, end: datetime) -> str:
    """The folder name of a checked window under ``monitoring/<model>/``; to the second, as scheduled windows end at "now"."""
    return f"{start.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{end.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


def run_drift_check(config: PipelineConfig, start: datetime, end: datetime) -> DriftReport:
    """Compare the window's traffic of the production version with that version's reference profile.

    Plain function (no Prefect calls) so ``llmops monitor --backfill`` can replay windows with it.
    The window's files land in ``monitoring/<model>/<window-id>/``.
    """
    st, name = store(), config.model_name
    registry = Registry(st, name)
    version = registry.resolve(config.serve.alias)
    try:
        profile = ReferenceProfile.from_json(registry.read_file(version, "reference_profile.json"))
    except ArtifactNotFound:
        raise ArtifactNotFound(f"{name} v{version} has no reference_profile.json: it was registered without monitoring") from None
    tokenizer = AutoTokenizer.from_pretrained(registry.download(version, cache_dir()))
    window_name = store_window_id(start, end)
    prefix = f"monitoring/{name}/{window_name}"
    local = st.local_path(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = local if local is not None else Path(tmp)
        # streamed partition by partition: other versions' records and malformed lines are counted in the notes
        if profile.semantic is not None and config.monitor.semantic_model is not None:
            report = check_store_window_semantic(st, name, start, end, profile, tokenize_with(tokenizer), config.monitor,
                                                 out_dir, embedder_for(config.monitor, profile.semantic),
                                                 version=version, window_id=window_name)
        else:
            report = check_store_window(st, name, start, end, profile, tokenize_with(tokenizer), config.monitor,
                                        out_dir, version=version, window_id=window_name)
        if local is None:
            st.upload_dir(out_dir, prefix)
    return report.model_copy(update={"out_dir": st.uri_for(prefix)})


@task(name="check-drift")
def check_drift(config: PipelineConfig, start: datetime, end: datetime) -> DriftReport:
    report = run_drift_check(config, start, end)
    create_markdown_artifact(render_summary(report, link_base=link(report.out_dir)),
                             key=artifact_key(config.model_name, "drift"), description=f"drift verdict: {report.verdict}")
    get_run_logger().info("window %s: %s (severity %s), %d records; alerting: %s", report.window_id, report.verdict,
                          report.severity, report.n_samples, report.alerting or "none")
    return report


def publish_trend(st: ArtifactStore, name: str) -> tuple[str, Trend]:
    """PSI per signal over every stored window, as trend.md + trend.png in ``monitoring/<model>/trend/``.

    Returns the URI of trend.md and the trend itself (its verdicts are the policy's history).
    """
    prefix = f"monitoring/{name}/trend"
    with tempfile.TemporaryDirectory() as tmp:
        result = trend(st, name, out_dir=Path(tmp))
        st.upload_dir(tmp, prefix)
    create_table_artifact(
        [{"window": p.window_id, "verdict": p.verdict, "n": p.n_samples,
          **{s: round(p.psi[s], 3) for s in result.signals if s in p.psi}} for p in result.points],
        key=artifact_key(name, "drift-trend"), description="PSI per signal over the checked windows",
    )
    return st.uri_for(f"{prefix}/trend.md"), result


@task(name="decide-drift-event")
def decide_drift_event(config: PipelineConfig, report: DriftReport) -> DriftOutcome:
    """Apply debounce and cooldown over the stored windows; emit ``llmops.drift.detected`` when they allow."""
    st, name, now = store(), config.model_name, datetime.now(timezone.utc)
    # the trend of every stored window, this one included, is both the policy's history and a published report
    trend_uri, history_trend = publish_trend(st, name)
    history = [p.verdict for p in history_trend.points] or [report.verdict]
    state_key = f"monitoring/{name}/last_drift_event.json"
    last = st.get_json(state_key) if st.exists(state_key) else None
    emit, reason = emission_decision(history, config.monitor, now, datetime.fromisoformat(last["at"]) if last else None)
    if emit:
        event = emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": f"llmops.model.{name}", "prefect.resource.name": name},
            payload={"window_id": report.window_id, "window_start": report.start.isoformat() if report.start else None,
                     "window_end": report.end.isoformat() if report.end else None, "model_version": report.model_version,
                     "severity": report.severity, "signals": ",".join(report.alerting), "report": report.out_dir},
        )
        st.put_json(state_key, {"at": now.isoformat(), "window_id": report.window_id,
                                "event_id": str(event.id) if event else None})
    get_run_logger().info("drift event: %s (%s)", "emitted" if emit else "not emitted", reason)
    base = report.out_dir.rstrip("/")
    return DriftOutcome(
        window_id=report.window_id, model_name=name, model_version=report.model_version, verdict=report.verdict,
        severity=report.severity, n_samples=report.n_samples, alerting_signals=report.alerting,
        warning_signals=report.warning, drift_uri=f"{base}/drift.json",
        report_html=f"{base}/{report.files['report_html']}" if "report_html" in report.files else None,
        summary_uri=f"{base}/summary.md", trend_uri=trend_uri, event_emitted=emit, event_reason=reason,
    )
