"""Register and deploy stage: a new registry version, a smoke test, and promotion through the gate."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.events import emit_event

from llmops.infra.config import PipelineConfig
from llmops.infra.traffic.log import parse_ts, read_window
from llmops.models.records import (
    CompressionReport,
    DatasetRef,
    EvalReport,
    ModelVersionRef,
    ProfileRef,
    TokenizerRef,
    TrainRef,
)
from llmops.models.release import Registry, register_candidate, release, smoke_test
from llmops.monitoring.canary import CanaryVerdict, compare_canary, read_outcomes
from llmops.tasks.core.context import CANARY_STARTED, artifact_key, cache_dir, link, model_resource, store, timeout_s


@task(name="reserve-version", timeout_seconds=timeout_s("reserve-version"))
def reserve_version(model_name: str) -> int:
    """Claim the next version number now, so the profile and card can name it; a failed run leaves a gap."""
    return Registry(store(), model_name).claim_version()


@task(name="register-model", timeout_seconds=timeout_s("register-model"))
def register_model(config: PipelineConfig, version: int, dataset: DatasetRef, tokenizer: TokenizerRef, run: TrainRef,
                   evaluation: EvalReport, compression: Optional[CompressionReport],
                   reference_profile: Optional[ProfileRef]) -> ModelVersionRef:
    ref = register_candidate(store(), config, version=version, dataset=dataset, tokenizer=tokenizer, run=run,
                             evaluation=evaluation, compression=compression, reference_profile=reference_profile,
                             cache_dir=cache_dir())
    card_uri = ref.uri.rsplit("/", 1)[0] + "/README.md"
    create_link_artifact(link(card_uri), link_text=f"model card: {ref.name} v{ref.version}",
                         key=artifact_key(ref.name, "model-card"))
    get_run_logger().info("registered %s version %d (%s)", ref.name, ref.version, ", ".join(ref.variants))
    return ref


@task(name="promote-model", timeout_seconds=timeout_s("promote-model"))
def promote_model(version: ModelVersionRef, evaluation: EvalReport, promote: bool = True,
                  canary: Optional[str] = None) -> Optional[int]:
    """Smoke-test the version, move staging (and production, or the ``canary`` alias, if the gate passed), and emit
    the decision as an event (``llmops.model.canary_started`` for a canary)."""
    st = store()
    samples = smoke_test(st, version.name, version.version, cache_dir())
    passed = evaluation.gate.promote and promote
    production = release(st, version.name, version.version, passed, evaluation.gate.reason, canary)
    decision = (CANARY_STARTED if canary else "llmops.model.promoted") if passed else "llmops.model.rejected"
    emit_event(
        event=decision,
        resource=model_resource(version.name),
        payload={"version": version.version, "production_version": production, "gate": evaluation.gate.model_dump()},
    )
    get_run_logger().info("v%d smoke test ok %s; production is now v%s", version.version, samples, production)
    return production


@task(name="check-canary", timeout_seconds=timeout_s("check-canary"))
def check_canary(config: PipelineConfig) -> Optional[CanaryVerdict]:
    """The canary against production on the traffic each served since the canary started; None without a canary."""
    st, name, cfg = store(), config.model_name, config.serve.canary
    registry = Registry(st, name)
    canary, production, since = registry.alias(cfg.alias), registry.alias(config.serve.alias), \
        registry.alias_set_at(cfg.alias)
    if canary is None or production is None or canary == production:
        get_run_logger().info("no canary to check (canary %s, production %s)", canary, production)
        return None
    records = read_window(st, name, parse_ts(since), datetime.now(timezone.utc))
    verdict = compare_canary(records, read_outcomes(st, name), production, canary, cfg)
    reasons = "; ".join(verdict.reasons)
    create_table_artifact([{"side": side, **asdict(getattr(verdict, side))} for side in ("production", "canary")],
                          key=artifact_key(name, "canary"), description=f"{verdict.action}: {reasons}")
    get_run_logger().info("canary v%d vs production v%d: %s (%s)", canary, production, verdict.action, reasons)
    return verdict


@task(name="apply-canary-verdict", timeout_seconds=timeout_s("apply-canary-verdict"))
def apply_canary_verdict(config: PipelineConfig, verdict: CanaryVerdict) -> Optional[int]:
    """Promote the canary (production moves to it) or roll it back (the canary alias is cleared, production never
    moved), and emit the decision; return production's version."""
    registry, name, cfg = Registry(store(), config.model_name), config.model_name, config.serve.canary
    version, reason = verdict.canary.version, "; ".join(verdict.reasons)
    if verdict.action == "wait":
        return verdict.production.version
    if verdict.action == "promote":
        registry.set_alias(config.serve.alias, version, f"canary check: {reason}")
    registry.clear_alias(cfg.alias, f"canary {verdict.action}: {reason}")
    production = registry.alias(config.serve.alias)
    emit_event(
        event="llmops.model.promoted" if verdict.action == "promote" else "llmops.model.rolled_back",
        resource=model_resource(name),
        payload={"version": version, "production_version": production, "via": "canary",
                 "reasons": verdict.reasons, "verdict": verdict.to_json()},
    )
    return production
