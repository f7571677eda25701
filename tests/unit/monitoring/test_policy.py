"""Alert policy: corrections, statuses, effect size AND significance, minimum samples, severity, debounce, cooldown."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig, SignalThresholds
from llmops.monitoring import policy
from llmops.monitoring.check import judge, validate_config
from llmops.monitoring.records import SignalStats

NOW = datetime(2026, 11, 23, 15, tzinfo=timezone.utc)


def _stats(name: str, psi: float, p: float) -> SignalStats:
    return SignalStats(name=name, kind="continuous", n_reference=1000, n_current=1000, psi=psi, kl=psi / 2,
                       js=0.1, psi_noise_floor=0.02, test="ks", statistic=0.1, p_value=p, effect_size=0.1,
                       effect_size_name="ks_d", bins=["<= 1", "> 1"], reference_counts=[500, 500],
                       current_counts=[500, 500])


def test_bonferroni_and_holm_adjusted_p_values():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    assert policy.adjust_p_values(p, "bonferroni") == pytest.approx({"a": 0.04, "b": 0.16, "c": 0.12, "d": 1.0})
    # Holm: sorted 0.01*4, 0.03*3, 0.04*2, 0.5*1, made monotone by a running max
    assert policy.adjust_p_values(p, "holm") == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    with pytest.raises(ValueError, match="unknown multiple-testing correction 'sidak'"):
        policy.adjust_p_values(p, "sidak")


@pytest.mark.parametrize("psi, p_adj, status", [
    (0.05, 1e-12, "ok"),      # significant but tiny effect
    (0.15, 1e-12, "warn"),
    (0.30, 1e-12, "alert"),
    (0.30, 0.02, "warn"),     # large effect, not significant (small window): no alert
    (0.10, 0.5, "warn"),      # warn is effect size alone, inclusive threshold
])
def test_signal_status_needs_effect_size_and_significance_to_alert(psi, p_adj, status):
    assert policy.signal_status(psi, p_adj, psi_warn=0.1, psi_alert=0.2, alpha=0.01) == status


def test_small_effect_with_a_huge_sample_does_not_alert():
    from llmops.monitoring import stats

    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=200_000), rng.normal(0.03, size=200_000)  # a shift of 0.03 sd
    edges = np.quantile(ref, np.arange(1, 10) / 10)
    psi = stats.divergences(stats.bin_counts(ref, edges), stats.bin_counts(cur, edges), 0.5)["psi"]
    p = stats.ks_test(ref[:5000], cur).p_value
    assert stats.ks_test(ref, cur).p_value < 1e-10  # "significant"...
    assert psi < 0.01  # ...but negligible
    assert policy.signal_status(psi, min(1.0, p * 10), psi_warn=0.1, psi_alert=0.2, alpha=0.01) == "ok"


def test_judge_corrects_over_the_family_and_applies_per_signal_thresholds():
    cfg = MonitorConfig(signal_thresholds={"prompt_chars": SignalThresholds(psi_warn=0.5, psi_alert=1.0)})
    measured = {"prompt_chars": _stats("prompt_chars", 0.6, 1e-9),
                "prompt_surprisal": _stats("prompt_surprisal", 0.3, 0.004),
                "latency_ms": _stats("latency_ms", 3.0, 1e-30)}
    results = judge(measured, cfg)
    assert results["prompt_chars"].status == "warn" and results["prompt_chars"].psi_alert == 1.0
    assert results["prompt_surprisal"].p_adjusted == pytest.approx(0.012)  # 0.004 * 3 tests: not significant
    assert results["prompt_surprisal"].status == "warn"
    assert results["latency_ms"].status == "alert" and results["latency_ms"].report_only
    decision = policy.window_verdict(results, 1000, cfg)
    assert (decision.verdict, decision.alerting, decision.warning) == ("warn", [], ["prompt_chars", "prompt_surprisal"])
    assert decision.severity == "low"


def test_window_verdict_min_samples_and_severity():
    cfg = MonitorConfig()
    results = judge({"prompt_chars": _stats("prompt_chars", 0.3, 1e-9),
                     "prompt_tokens": _stats("prompt_tokens", 0.7, 1e-9)}, cfg)
    decision = policy.window_verdict(results, 1000, cfg)
    assert (decision.verdict, decision.severity, decision.alerting) == (
        "alert", "high", ["prompt_chars", "prompt_tokens"])
    assert policy.window_verdict(results, 99, cfg) == policy.WindowDecision("insufficient_data", "none", [], [])
    medium = judge({"prompt_chars": _stats("prompt_chars", 0.3, 1e-9)}, cfg)
    assert policy.window_verdict(medium, 1000, cfg).severity == "medium"
    assert policy.window_verdict({}, 1000, cfg).verdict == "ok"


def test_debounce_needs_consecutive_alert_windows():
    cfg = MonitorConfig(consecutive_windows=3, cooldown_minutes=0)
    assert not policy.should_emit(["alert", "alert"], cfg, NOW, None)
    assert not policy.should_emit(["alert", "warn", "alert", "alert"], cfg, NOW, None)
    assert policy.should_emit(["ok", "alert", "alert", "alert"], cfg, NOW, None)
    # a quiet window neither confirms nor breaks a run
    assert policy.should_emit(["alert", "insufficient_data", "alert", "alert"], cfg, NOW, None)
    assert not policy.should_emit(["alert", "alert", "alert", "insufficient_data"], cfg, NOW, None)
    assert not policy.should_emit([], cfg, NOW, None)


def test_cooldown_suppresses_a_new_event_after_the_last_one():
    cfg = MonitorConfig(consecutive_windows=1, cooldown_minutes=60)
    assert not policy.should_emit(["alert"], cfg, NOW, NOW - timedelta(minutes=59))
    assert policy.should_emit(["alert"], cfg, NOW, NOW - timedelta(minutes=60))
    assert not policy.should_emit(["ok"], cfg, NOW, None)


def test_config_naming_unknown_signals_is_rejected():
    with pytest.raises(ValueError, match=r"unknown signal\(s\) \['latency'\]"):
        validate_config(MonitorConfig(report_only_signals=["latency"]))
    with pytest.raises(ValueError, match="psi_warn \\(0.5\\) exceeds psi_alert"):
        SignalThresholds(psi_warn=0.5, psi_alert=0.2)


def test_psi_effect_subtracts_the_noise_floor_only_when_debiasing():
    assert policy.psi_effect(0.12, 0.09, debias=True) == pytest.approx(0.03)
    assert policy.psi_effect(0.05, 0.09, debias=True) == 0.0
    assert policy.psi_effect(0.12, 0.09, debias=False) == 0.12


def test_emission_decision_explains_itself():
    from datetime import datetime, timedelta, timezone

    from llmops.infra.config import MonitorConfig
    from llmops.monitoring.policy import emission_decision

    now = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    cfg = MonitorConfig(consecutive_windows=2, cooldown_minutes=30)
    assert emission_decision(["alert", "ok"], cfg, now, None) == (False, "verdict ok")
    assert emission_decision(["ok", "alert"], cfg, now, None) == (False, "waiting for 2 alerting windows in a row")
    assert emission_decision(["alert", "alert"], cfg, now, None) == (True, "alert confirmed")
    recent = now - timedelta(minutes=10)
    assert emission_decision(["alert", "alert"], cfg, now, recent) == (
        False, f"in cooldown since the event at {recent.isoformat()}")
    assert emission_decision(["alert", "alert"], cfg, now, now - timedelta(minutes=31)) == (True, "alert confirmed")
