"""The canary check: the canary's traffic against production's over the same period, and the decision it supports.

Each side is what one version served since the canary started: error rate (the servers' outcome counts, since a
failed request leaves no traffic record), p95 latency, mean completion log-prob, and the distribution of its
completions (length, log-prob, entropy, share stopped by eos or a stop string) tested against production's with a
two-sample KS test. The canary is promoted when it has served enough requests and is no worse within the margins
of ``serve.canary``; rolled back, with every reason, as soon as it is worse on any of them.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import numpy as np

from llmops.infra.config import CanaryConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import outcomes_prefix
from llmops.monitoring.stats import ks_test

COMPLETION_FEATURES = ("completion_tokens", "completion_logprob", "completion_entropy", "stopped")


@dataclass(frozen=True)
class Side:
    version: int
    records: int  # traffic records (answered requests) in the period
    errors: int  # failed requests (outcome counts)
    error_rate: float
    p95_latency_ms: Optional[float]
    mean_logprob: Optional[float]


@dataclass(frozen=True)
class CanaryVerdict:
    action: Literal["wait", "promote", "rollback"]
    reasons: list[str]
    production: Side
    canary: Side
    drift: dict[str, dict[str, float]] = field(default_factory=dict)  # feature -> KS statistic, p-value

    def to_json(self) -> dict:
        return asdict(self)


def read_outcomes(store: ArtifactStore, model: str) -> dict[int, dict[str, int]]:
    """Answered and failed requests per version, summed over every server process's counts."""
    totals: dict[int, dict[str, int]] = {}
    for key in store.list(outcomes_prefix(model)):
        if not key.endswith(".json"):
            continue
        for version, counts in store.get_json(key).get("versions", {}).items():
            side = totals.setdefault(int(version), {"ok": 0, "errors": 0})
            side["ok"] += int(counts.get("ok", 0))
            side["errors"] += int(counts.get("errors", 0))
    return totals


def _features(records: Sequence[dict]) -> dict[str, np.ndarray]:
    feats = [r["features"] for r in records]
    out = {name: np.array([f[name] for f in feats], dtype=np.float64) for name in COMPLETION_FEATURES[:3]}
    out["stopped"] = np.array([f["stop_reason"] == "stop" for f in feats], dtype=np.float64)
    return out


def _side(version: int, records: Sequence[dict], outcomes: dict[int, dict[str, int]]) -> Side:
    counts = outcomes.get(version, {})
    errors = int(counts.get("errors", 0))
    answered = max(len(records), int(counts.get("ok", 0)))
    latency = [r["features"]["latency_ms"] for r in records if r["features"].get("latency_ms") is not None]
    logprob = [r["features"]["completion_logprob"] for r in records]
    return Side(version=version, records=len(records), errors=errors,
                error_rate=errors / (answered + errors) if answered + errors else 0.0,
                p95_latency_ms=float(np.percentile(latency, 95)) if latency else None,
                mean_logprob=float(np.mean(logprob)) if logprob else None)


def compare_canary(records: Iterable[dict], outcomes: dict[int, dict[str, int]], production: int, canary: int,
                   cfg: CanaryConfig) -> CanaryVerdict:
    """The verdict on ``canary`` against ``production`` from the period's traffic ``records`` and ``outcomes``."""
    by_version: dict[int, list[dict]] = {production: [], canary: []}
    for record in records:
        if record.get("version") in by_version:
            by_version[record["version"]].append(record)
    prod, can = (_side(v, by_version[v], outcomes) for v in (production, canary))
    short = [f"{name} v{s.version} served {s.records} of the {cfg.min_requests} requests needed"
             for name, s in (("production", prod), ("canary", can)) if s.records < cfg.min_requests]
    if short:
        return CanaryVerdict("wait", short, prod, can)
    drift = {}
    features = (_features(by_version[production]), _features(by_version[canary]))
    for name in COMPLETION_FEATURES:
        result = ks_test(features[0][name], features[1][name])
        drift[name] = {"statistic": result.statistic, "p_value": result.p_value}
    reasons = _worse(prod, can, drift, cfg)
    return CanaryVerdict("rollback" if reasons else "promote", reasons or [
        f"canary v{can.version} is no worse than production v{prod.version} within serve.canary's margins"],
        prod, can, drift)


def _worse(prod: Side, can: Side, drift: dict[str, dict[str, float]], cfg: CanaryConfig) -> list[str]:
    reasons = []
    if can.error_rate - prod.error_rate > cfg.max_error_rate_increase:
        reasons.append(f"error rate {can.error_rate:.2%} against production's {prod.error_rate:.2%} (more than "
                       f"{cfg.max_error_rate_increase:.2%} above)")
    if can.p95_latency_ms and prod.p95_latency_ms and can.p95_latency_ms > cfg.max_latency_ratio * prod.p95_latency_ms:
        reasons.append(f"p95 latency {can.p95_latency_ms:.0f} ms against production's {prod.p95_latency_ms:.0f} ms "
                       f"(more than {cfg.max_latency_ratio}x)")
    if can.mean_logprob is not None and prod.mean_logprob is not None \
            and can.mean_logprob < prod.mean_logprob - cfg.max_logprob_drop:
        reasons.append(f"mean completion log-prob {can.mean_logprob:.3f} against production's "
                       f"{prod.mean_logprob:.3f} nats/token (more than {cfg.max_logprob_drop} below)")
    alpha = cfg.drift_alpha / len(drift)  # Bonferroni over the features tested
    for name, test in drift.items():
        if test["p_value"] < alpha and test["statistic"] >= cfg.max_drift_effect:
            reasons.append(f"{name} drifted from production's (KS {test['statistic']:.2f} >= "
                           f"{cfg.max_drift_effect}, p {test['p_value']:.1e})")
    return reasons
