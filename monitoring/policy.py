"""The alert policy: per-signal status, multiple-testing correction, window verdict, debounce, and the ledger of
emitted drift events the cooldown reads."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Optional

import numpy as np

from llmops.infra.config import MonitorConfig
from llmops.infra.store import ArtifactStore
from llmops.monitoring import layout
from llmops.monitoring.records import (
    CLASSIFIER_SIGNAL,
    ClassifierResult,
    LedgerEntry,
    NgramWeight,
    Severity,
    SignalResult,
    Status,
    Verdict,
)

if TYPE_CHECKING:  # scikit-learn loads with the classifier, not with the policy
    from llmops.monitoring.classifier import ClassifierOutcome


@dataclass(frozen=True)
class WindowDecision:
    """The verdict of a window with the signals behind it."""

    verdict: Verdict
    severity: Severity
    alerting: list[str]
    warning: list[str]


def adjust_p_values(p_values: Mapping[str, float], method: str) -> dict[str, float]:
    """Family-wise corrected p-values (compare them with alpha directly).

    Args:
        p_values: Raw p-value per signal tested in the window (the family).
        method: ``bonferroni`` (p * m) or ``holm`` (step-down: uniformly more powerful, same guarantee).
    """
    names = list(p_values)
    raw = np.array([p_values[n] for n in names], dtype=np.float64)
    m = raw.size
    if method == "bonferroni":
        adjusted = raw * m
    elif method == "holm":
        order = np.argsort(raw, kind="stable")
        stepped = raw[order] * (m - np.arange(m))
        adjusted = np.empty(m)
        adjusted[order] = np.maximum.accumulate(stepped)  # monotone: a smaller p never gets a larger adjusted p
    else:
        raise ValueError(f"unknown multiple-testing correction {method!r}: use 'bonferroni' or 'holm'")
    return {n: float(v) for n, v in zip(names, np.minimum(adjusted, 1.0))}


def thresholds_for(name: str, cfg: MonitorConfig) -> tuple[float, float]:
    """(psi_warn, psi_alert) for a signal: its override in ``cfg.signal_thresholds`` or the global pair."""
    override = cfg.signal_thresholds.get(name)
    return (override.psi_warn, override.psi_alert) if override else (cfg.psi_warn, cfg.psi_alert)


def signal_status(psi: float, p_adjusted: float, *, psi_warn: float, psi_alert: float, alpha: float) -> Status:
    """ok / warn / alert for one signal, from its (debiased, see :func:`psi_effect`) PSI.

    Alert needs a large effect (PSI >= psi_alert) AND significance (corrected p < alpha): with a
    huge window every tiny shift is significant, with a small one PSI is noisy; requiring both keeps
    the meaning of "alert" independent of the window size. Warn is effect size alone.
    """
    if psi >= psi_alert and p_adjusted < alpha:
        return "alert"
    if psi >= psi_warn:
        return "warn"
    return "ok"


def psi_effect(psi: float, noise_floor: float, debias: bool) -> float:
    """The PSI the thresholds apply to: ``max(psi - noise_floor, 0)`` when debiasing, else ``psi``.

    Two samples of one distribution have an expected PSI of about (B-1)(1/n_ref + 1/n_cur): 0.09 at
    10 bins and 100 records, where a raw-PSI 0.1 warn fires on ~35% of undrifted signals. The
    conventional 0.1/0.2 levels come from large samples, where this floor is ~0.
    """
    return max(psi - noise_floor, 0.0) if debias else psi


def severity_for(max_psi: float, verdict: Verdict, cfg: MonitorConfig) -> Severity:
    """none (ok / insufficient data), low (warn), medium (alert), high (alert with PSI >= psi_high)."""
    if verdict == "warn":
        return "low"
    if verdict == "alert":
        return "high" if max_psi >= max(cfg.psi_high, cfg.psi_alert) else "medium"
    return "none"


def classifier_status(new_share: float, p_value: float, p_adjusted: float, *, min_share: float,
                      alpha: float) -> Status:
    """ok / warn / alert for the domain classifier: an effect (an estimated ``min_share`` of the window new) and
    significance, alert after the correction, warn before it (a PSI warn needs the effect alone: the share is a
    noisier estimate than a debiased PSI)."""
    if new_share < min_share:
        return "ok"
    return "alert" if p_adjusted < alpha else "warn" if p_value < alpha else "ok"


def judge_classifier(outcome: ClassifierOutcome, p_adjusted: float, cfg: MonitorConfig) -> ClassifierResult:
    """The domain classifier's result, its p-value corrected over the window's family (``p_adjusted``)."""
    status = classifier_status(outcome.new_share, outcome.p_value, p_adjusted, min_share=cfg.classifier_min_share,
                               alpha=cfg.alpha)
    return ClassifierResult(
        n_reference=outcome.n_reference, n_current=outcome.n_current, auc=outcome.auc, p_rank=outcome.p_rank,
        p_tail=outcome.p_tail, p_value=outcome.p_value, p_adjusted=p_adjusted, significant=p_adjusted < cfg.alpha,
        new_share=outcome.new_share, min_share=cfg.classifier_min_share, status=status,
        report_only=CLASSIFIER_SIGNAL in cfg.report_only_signals,
        reference_ngrams=[NgramWeight(ngram=g, weight=w) for g, w in outcome.reference_ngrams],
        current_ngrams=[NgramWeight(ngram=g, weight=w) for g, w in outcome.current_ngrams], seconds=outcome.seconds)


def window_verdict(signals: Mapping[str, SignalResult], n_samples: int, cfg: MonitorConfig,
                   classifier: Optional[ClassifierResult] = None) -> WindowDecision:
    """The window's verdict from its signals and the domain classifier; report-only signals never count.

    Fewer than ``cfg.min_samples`` records gives ``insufficient_data`` whatever the signals say.
    """
    if n_samples < cfg.min_samples:
        return WindowDecision("insufficient_data", "none", [], [])
    counted = [s for s in signals.values() if not s.report_only]
    alerting = [s.name for s in counted if s.status == "alert"]
    warning = [s.name for s in counted if s.status == "warn"]
    if classifier is not None and not classifier.report_only and classifier.status != "ok":
        (alerting if classifier.status == "alert" else warning).append(classifier.name)
    verdict: Verdict = "alert" if alerting else "warn" if warning else "ok"
    moved = [s.psi_effect for s in counted if s.name in alerting or s.name in warning]
    return WindowDecision(verdict, severity_for(max(moved, default=0.0), verdict, cfg), alerting, warning)


def should_emit(verdict_history: Sequence[str], cfg: MonitorConfig, now: datetime,
                last_event_at: Optional[datetime]) -> bool:
    """Whether to emit ``llmops.drift.detected`` now.

    Args:
        verdict_history: Window verdicts, oldest first, the current window last.
        cfg: ``consecutive_windows`` and ``cooldown_minutes``.
        now: The current time (timezone-aware like ``last_event_at``).
        last_event_at: When the last drift event was emitted, or None.

    Returns:
        True when the last ``consecutive_windows`` judged windows are all ``alert`` and the cooldown
        since the last event has passed. ``insufficient_data`` windows are transparent (a quiet night
        neither confirms nor breaks a run); ``ok`` and ``warn`` break it.
    """
    if not verdict_history or verdict_history[-1] != "alert":
        return False
    judged = [v for v in verdict_history if v != "insufficient_data"]
    recent = judged[-cfg.consecutive_windows:]
    if len(recent) < cfg.consecutive_windows or any(v != "alert" for v in recent):
        return False
    return last_event_at is None or now - last_event_at >= timedelta(minutes=cfg.cooldown_minutes)


def emission_decision(verdict_history: Sequence[str], cfg: MonitorConfig, now: datetime,
                      last_event_at: Optional[datetime]) -> tuple[bool, str]:
    """:func:`should_emit` with the reason a person reads in the logs and the flow result."""
    emit = should_emit(verdict_history, cfg, now, last_event_at)
    latest = verdict_history[-1] if verdict_history else "none"
    if latest != "alert":
        return emit, f"verdict {latest}"
    if emit:
        return emit, "alert confirmed"
    if last_event_at and now - last_event_at < timedelta(minutes=cfg.cooldown_minutes):
        return emit, f"in cooldown since the event at {last_event_at.isoformat()}"
    return emit, f"waiting for {cfg.consecutive_windows} alerting windows in a row"


class DriftEventLedger:
    """The last drift event of a model, in the store (``monitoring/<model>/last_drift_event.json``)."""

    def __init__(self, store: ArtifactStore, model: str):
        self.store, self.key = store, layout.ledger_key(model)

    def last(self) -> Optional[LedgerEntry]:
        return LedgerEntry.model_validate(self.store.get_json(self.key)) if self.store.exists(self.key) else None

    def record(self, entry: LedgerEntry) -> None:
        self.store.put_json(self.key, entry.model_dump(mode="json"))

    def decide(self, verdict_history: Sequence[str], cfg: MonitorConfig, now: datetime) -> tuple[bool, str]:
        """:func:`emission_decision` against the last recorded event."""
        last = self.last()
        return emission_decision(verdict_history, cfg, now, last.at if last else None)
