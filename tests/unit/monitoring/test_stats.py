"""Drift statistics against scipy and hand-computed values: PSI, KL, JS, KS, chi-square, binning, smoothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from llmops.monitoring import stats
from llmops.monitoring.signals import OTHER


def test_psi_kl_js_match_hand_computed_values():
    ref, cur = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected_psi = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    expected_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(current || reference)
    m = [0.375, 0.625]
    jsd = 0.5 * (0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])) \
        + 0.5 * (0.25 * math.log2(0.25 / m[0]) + 0.75 * math.log2(0.75 / m[1]))
    assert stats.psi(ref, cur) == pytest.approx(expected_psi, rel=1e-12)
    assert stats.kl_divergence(cur, ref) == pytest.approx(expected_kl, rel=1e-12)
    assert stats.js_distance(ref, cur) == pytest.approx(math.sqrt(jsd), rel=1e-12)


def test_psi_is_the_symmetrised_kl_and_js_matches_scipy():
    rng = np.random.default_rng(0)
    ref, cur = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
    assert stats.psi(ref, cur) == pytest.approx(stats.kl_divergence(cur, ref) + stats.kl_divergence(ref, cur))
    assert stats.kl_divergence(cur, ref) == pytest.approx(sps.entropy(cur, ref))
    assert stats.js_distance(ref, cur) == pytest.approx(jensenshannon(ref, cur, base=2))


def test_identical_distributions_give_zero():
    counts = np.array([10, 30, 0, 60])
    div = stats.divergences(counts, counts, pseudo=0.5)
    assert div["psi"] == pytest.approx(0.0, abs=1e-15)
    assert div["kl"] == pytest.approx(0.0, abs=1e-15)
    assert div["js"] == pytest.approx(0.0, abs=1e-7)


def test_disjoint_distributions_give_large_finite_values():
    div = stats.divergences(np.array([1000, 0]), np.array([0, 1000]), pseudo=0.5)
    assert div["js"] == pytest.approx(1.0)  # unsmoothed JS reaches its maximum
    assert 10 < div["psi"] < math.inf
    assert 5 < div["kl"] < math.inf


def test_smoothing_adds_the_pseudo_count_to_every_bin_of_both_sides():
    ref_s = stats.proportions(np.array([100, 0]), pseudo=0.5)
    cur_s = stats.proportions(np.array([50, 50]), pseudo=0.5)
    assert ref_s.tolist() == pytest.approx([100.5 / 101, 0.5 / 101])
    assert cur_s.tolist() == pytest.approx([0.5, 0.5])
    expected = sum((c - r) * math.log(c / r) for r, c in zip(ref_s, cur_s))
    assert stats.divergences(np.array([100, 0]), np.array([50, 50]), 0.5)["psi"] == pytest.approx(expected)


def test_empty_bin_without_smoothing_is_infinite():
    ref = stats.proportions(np.array([100, 0]))
    cur = stats.proportions(np.array([50, 50]))
    with np.errstate(divide="ignore"):
        assert stats.kl_divergence(cur, ref) == math.inf
        assert stats.psi(ref, cur) == math.inf


def test_statistics_vectorise_over_columns():
    rng = np.random.default_rng(1)
    ref, cur = rng.dirichlet(np.ones(8), size=5), rng.dirichlet(np.ones(8), size=5)
    batched = stats.psi(ref, cur)
    assert batched.shape == (5,)
    assert batched.tolist() == pytest.approx([stats.psi(r, c) for r, c in zip(ref, cur)])


def test_bin_counts_are_right_closed_and_open_ended():
    edges = np.array([1.0, 2.0])
    values = np.array([-100.0, 1.0, 1.5, 2.0, 2.0001, 1e9])
    assert stats.bin_counts(values, edges).tolist() == [2, 2, 2]  # (-inf,1], (1,2], (2,inf)
    assert stats.bin_counts(np.array([5.0]), np.array([])).tolist() == [1]


def test_category_counts_for_ints_and_strings_send_unknowns_to_other():
    categories = ["7", "3", OTHER]
    assert stats.category_counts(np.array([3, 3, 7, 9, 100]), categories).tolist() == [1, 2, 2]
    labels = np.array(["stop", "length", "error", "stop"], dtype=object)
    assert stats.category_counts(labels, ["length", "stop", OTHER]).tolist() == [1, 2, 1]
    assert stats.category_counts(np.array([1, 2]), [OTHER]).tolist() == [2]


def test_ks_equals_scipy_ks_2samp_and_reports_the_effect_size():
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=700), rng.normal(0.2, size=300)
    expected = sps.ks_2samp(ref, cur)
    result = stats.ks_test(ref, cur)
    assert (result.statistic, result.p_value) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert result.effect_size == result.statistic


def test_chi2_equals_scipy_and_cramers_v_equals_scipy_association():
    ref, cur = np.array([300, 200, 100, 0]), np.array([50, 90, 40, 0])  # last category empty on both sides
    table = np.array([ref[:3], cur[:3]])
    chi2, p, dof, _ = sps.chi2_contingency(table, correction=False)
    result = stats.chi2_test(ref, cur)
    assert (result.statistic, result.p_value, result.dof) == (pytest.approx(chi2), pytest.approx(p), dof)
    assert result.effect_size == pytest.approx(sps.contingency.association(table, method="cramer"))


def test_chi2_handles_a_category_new_in_the_window_and_degenerate_tables():
    result = stats.chi2_test(np.array([100, 0]), np.array([50, 50]))
    assert result.p_value < 1e-10 and 0 < result.effect_size <= 1
    assert stats.chi2_test(np.array([100, 0]), np.array([40, 0])).p_value == 1.0  # one category: nothing to test
    assert stats.chi2_test(np.array([100, 5]), np.array([0, 0])).p_value == 1.0  # empty window


def test_psi_noise_floor_predicts_the_null_psi():
    rng = np.random.default_rng(3)
    edges = np.quantile(rng.normal(size=20_000), np.linspace(0, 1, 11)[1:-1])
    ref_counts = stats.bin_counts(rng.normal(size=5000), edges)
    null = [stats.divergences(ref_counts, stats.bin_counts(rng.normal(size=200), edges), 0.5)["psi"]
            for _ in range(300)]
    floor = stats.psi_noise_floor(10, 5000, 200)
    assert floor == pytest.approx(9 * (1 / 5000 + 1 / 200))
    assert np.mean(null) == pytest.approx(floor, rel=0.25)
