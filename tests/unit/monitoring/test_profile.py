"""Reference profiles: quantile bins fixed from the reference (ties), bounded KS sample, JSON round trip."""
from __future__ import annotations

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig
from llmops.monitoring.profile import build_profile, categorical_profile, continuous_profile, quantile_edges
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.signals import OTHER
from llmops.monitoring.synthetic import synthetic_records, toy_tokenize


def test_quantile_edges_split_continuous_values_into_equal_bins():
    values = np.random.default_rng(0).normal(size=10_000)
    edges = quantile_edges(values, 10)
    assert edges.size == 9
    prof = continuous_profile(values, 10, sample_size=5000)
    assert prof.counts == [1000] * 10


def test_tail_edges_make_mass_moving_far_out_visible():
    from llmops.monitoring import stats

    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=20_000), rng.normal(size=20_000)
    cur[:2000] += 6.0  # 10% of values move far into the upper tail
    plain, tailed = quantile_edges(ref, 10), quantile_edges(ref, 10, tail=0.01)
    assert tailed.size == 11 and tailed[0] == pytest.approx(np.quantile(ref, 0.01), abs=0.01)
    psi = {name: stats.divergences(stats.bin_counts(ref, e), stats.bin_counts(cur, e), 0.5)["psi"]
           for name, e in [("plain", plain), ("tailed", tailed)]}
    assert psi["plain"] < 0.1 < 0.2 < psi["tailed"]


def test_ties_merge_into_one_bin_for_discrete_signals():
    values = np.array([16.0] * 80 + [3.0] * 10 + [5.0] * 10)
    edges = quantile_edges(values, 10)
    assert edges.tolist() == [3.0, 5.0, 16.0]  # observed values only, no empty bins between integers
    assert continuous_profile(values, 10, 5000).counts == [10, 10, 80, 0]  # the last bin is open above 16


def test_constant_signal_gets_one_edge_and_an_open_upper_bin():
    prof = continuous_profile(np.full(200, 16.0), 10, 5000)
    assert prof.edges == [16.0] and prof.counts == [200, 0]
    assert prof.stats.std == 0.0


def test_ks_sample_is_bounded_sorted_and_deterministic():
    values = np.random.default_rng(1).exponential(size=20_000)
    first, second = continuous_profile(values, 10, 5000), continuous_profile(values, 10, 5000)
    assert len(first.sample) == 5000 and first.sample == sorted(first.sample)
    assert first.sample == second.sample
    assert first.stats.n == 20_000 and first.stats.mean == pytest.approx(values.mean())


def test_categorical_profile_keeps_top_k_plus_other():
    values = np.array([5] * 10 + [7] * 6 + [1] * 6 + [9] * 2)
    prof = categorical_profile(values, top_k=2)
    assert prof.categories == ["5", "1", OTHER]  # count desc; tie 7/1 broken by the smaller value
    assert prof.counts == [10, 6, 8]


def test_build_profile_from_records_and_json_round_trip():
    cfg = MonitorConfig(n_bins=8, top_k_tokens=20)
    profile = build_profile(synthetic_records(300), toy_tokenize, cfg, model_name="lm", model_version=3)
    assert profile.signals[0] == "prompt_chars" and "token_frequency" in profile.categorical
    assert len(profile.categorical["token_frequency"].categories) == 21
    assert all(len(p.edges) <= 7 + 2 for p in profile.continuous.values())  # 8 bins + two 1% tail bins
    assert profile.tail_quantile == 0.01
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile and again.model_version == 3


def test_profile_reads_token_ids_from_the_records_and_says_why_token_signals_are_missing():
    records = synthetic_records(150)
    with_ids = build_profile(records, None, MonitorConfig(), model_name="lm", model_version=1)
    assert {"token_frequency", "rare_token_share"} <= set(with_ids.signals) and not with_ids.skipped
    for r in records:
        del r["prompt_token_ids"]
    profile = build_profile(records, None, MonitorConfig(), model_name="lm", model_version=1)
    assert "token_frequency" not in profile.signals and not profile.common_tokens
    reason = "no record carries prompt_token_ids and no tokenizer given"
    assert profile.skipped == {"token_frequency": reason, "rare_token_share": reason}


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"needs at least min_samples=100 records, got 20"):
        build_profile(synthetic_records(20), toy_tokenize, MonitorConfig(), model_name="lm", model_version=1)
    with pytest.raises(ValueError, match="not a valid reference profile: .* error"):
        ReferenceProfile.from_json('{"model_name": "lm"}')
