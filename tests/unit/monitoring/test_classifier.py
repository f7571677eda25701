"""The domain classifier: quiet when the window is like the reference, alerts on a 10% minority of new prompts
and names its n-grams, joins the window's multiple-testing family and verdict."""
from __future__ import annotations

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring.check import check_window
from llmops.monitoring.classifier import (
    MIN_PER_SIDE,
    domain_classifier_test,
    held_out_tests,
    new_share_from_tail,
    reference_texts,
)
from llmops.monitoring.profile import build_profile
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

CFG = MonitorConfig(evidently_report=False)
NEW = TrafficShape(vocab_offset=1000)  # prompts drawn from words the reference never uses


def prompts(n: int, seed: int, shape: TrafficShape = TrafficShape()) -> list[str]:
    return [r["prompt"] for r in synthetic_records(n, shape, seed=seed)]


def mixed_records(n: int, share: float, seed: int) -> list[dict]:
    new = int(n * share)
    records = synthetic_records(n - new, seed=seed) + synthetic_records(new, NEW, seed=seed + 100)
    order = np.random.default_rng(seed).permutation(n)
    return [records[i] for i in order]


@pytest.fixture(scope="module")
def profile():
    return build_profile(synthetic_records(2000, seed=1), toy_tokenize, CFG, model_name="lm", model_version=4)


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_two_samples_of_one_population_are_not_told_apart(seed):
    outcome = domain_classifier_test(prompts(1000, 1), prompts(1000, seed))
    assert outcome.p_value > 0.01 and outcome.new_share < 0.1, outcome  # the share alone is noise here
    assert 0.4 < outcome.auc < 0.6


def test_a_tenth_of_new_prompts_is_found_measured_and_named():
    current = [r["prompt"] for r in mixed_records(1000, 0.10, seed=7)]
    outcome = domain_classifier_test(prompts(1000, 1), current)
    assert outcome.p_tail < 1e-6 and outcome.p_value == pytest.approx(2 * min(outcome.p_rank, outcome.p_tail))
    assert 0.06 < outcome.new_share < 0.2, outcome.new_share  # a lower bound on the true 10%
    new_words = set(" ".join(prompts(200, 9, NEW)).split()) - set(" ".join(prompts(2000, 1)).split())
    top_word = next(g for g, _ in outcome.current_ngrams if g.endswith("(word)"))
    assert top_word.split("'")[1] in new_words and all(w > 0 for _, w in outcome.current_ngrams)


def test_the_held_out_tests_on_known_scores():
    rng = np.random.default_rng(0)
    same = held_out_tests(rng.normal(size=500), rng.normal(size=500))
    assert same[1] > 0.01 and same[2] > 0.01 and same[3] < 0.05
    # a tenth of the window scores above everything: AUC near 0.55, the tail sees it, the share is near 0.1
    current = np.r_[rng.normal(size=450), rng.normal(10, 1, size=50)]
    auc, p_rank, p_tail, share = held_out_tests(rng.normal(size=500), current)
    assert 0.52 < auc < 0.6 and p_tail < 1e-6 < p_rank and 0.08 < share < 0.12
    assert new_share_from_tail(0.1, 0.1) == 0 and new_share_from_tail(0.0, 0.25) == 0.25
    half = held_out_tests(rng.normal(size=500), np.r_[rng.normal(size=250), rng.normal(10, 1, size=250)])
    assert 0.45 < half[3] < 0.55, "the share is not capped by the size of the tail"


def test_too_few_prompts_and_the_kept_sample():
    with pytest.raises(ValueError, match=f"the window has 3 non-empty prompts; the domain classifier needs "
                                         f"{MIN_PER_SIDE}"):
        domain_classifier_test(prompts(100, 1), ["a", "b", "c", "", None])
    texts = reference_texts(["x" * 5000, "", None, *prompts(50, 1)], 20)
    assert len(texts) == 20 and texts == reference_texts(["x" * 5000, "", None, *prompts(50, 1)], 20)
    assert max(map(len, reference_texts(["x" * 5000], 5))) == 2000


def test_the_window_check_alerts_on_a_tenth_of_new_prompts_and_says_what_changed(profile, tmp_path):
    assert len(profile.texts) == 2000
    report = check_window(profile, mixed_records(1000, 0.10, seed=7), toy_tokenize, CFG, tmp_path)
    assert report.classifier is not None and report.classifier.status == "alert"
    assert "domain_classifier" in report.alerting and report.verdict == "alert"
    assert report.n_tests == len(report.signals) + 1 and report.classifier.p_adjusted >= report.classifier.p_value
    summary = (tmp_path / "summary.md").read_text()
    assert "Domain classifier: alert" in summary and "What marks the window: '" in summary


def test_the_window_check_is_quiet_on_like_traffic_and_the_classifier_can_be_report_only_or_off(profile, tmp_path):
    quiet = check_window(profile, synthetic_records(1000, seed=3), toy_tokenize, CFG, tmp_path / "q")
    assert quiet.classifier.status == "ok" and quiet.verdict == "ok"
    drifted = mixed_records(1000, 0.10, seed=7)
    report_only = MonitorConfig(evidently_report=False, report_only_signals=["latency_ms", "domain_classifier"])
    shown = check_window(profile, drifted, toy_tokenize, report_only, tmp_path / "r")
    assert shown.classifier.status == "alert" and shown.classifier.report_only
    assert "domain_classifier" not in shown.alerting
    off = check_window(profile, drifted, toy_tokenize, MonitorConfig(evidently_report=False, domain_classifier=False),
                       tmp_path / "o")
    assert off.classifier is None and "domain_classifier" not in off.skipped


def test_a_profile_without_prompts_skips_the_classifier_with_the_reason(profile, tmp_path):
    old = profile.model_copy(update={"texts": []})
    report = check_window(old, mixed_records(1000, 0.10, seed=7), toy_tokenize, CFG, tmp_path)
    assert report.classifier is None
    assert report.skipped["domain_classifier"].startswith("the reference profile keeps no prompts")
