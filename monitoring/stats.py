"""Drift statistics in vectorised numpy/scipy: binning on fixed reference bins, PSI, KL, JS, KS and chi-square.

Conventions (see docs/monitoring.md):

* Continuous bins are right-closed on the reference's inner quantile edges ``e``: bin 0 is
  ``(-inf, e[0]]``, bin i is ``(e[i-1], e[i]]``, the last bin is ``(e[-1], inf)``.
* PSI and KL take *smoothed* proportions: a pseudo-count ``alpha`` is added to every bin of both
  histograms, so a bin empty on one side contributes a large but finite term instead of infinity.
  JS is bounded and defined with zeros, so it takes the raw proportions.
* Every function accepts a trailing "bins" axis, so many columns are computed in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class TestResult:
    """A hypothesis test with its effect size, so a p-value is never read alone.

    Attributes:
        test: ``ks`` or ``chi2``.
        statistic: KS D (sup distance of the CDFs) or Pearson's chi-square.
        p_value: Uncorrected p-value.
        effect_size: KS D itself, or Cramér's V for chi-square; both in [0, 1].
        dof: Degrees of freedom (chi-square only).
    """

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: float
    p_value: float
    effect_size: float
    dof: Optional[int] = None


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the right-closed bins defined by the inner ``edges`` (len(edges)+1 bins)."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")
    return np.bincount(index, minlength=edges.size + 1)


def category_counts(values: np.ndarray, categories: list[str]) -> np.ndarray:
    """Counts per category, the last category being the catch-all for values not among the others.

    Integer arrays (token ids) are matched against the categories parsed as ints with a sorted
    search, so a million token occurrences never go through Python objects.
    """
    named = categories[:-1]
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        ids = np.array([int(c) for c in named], dtype=np.int64)
        if ids.size == 0:
            return np.array([values.size])
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], values), 0, ids.size - 1)
        index = np.where(ids[order][pos] == values, order[pos], len(named))
    else:
        lookup = {c: i for i, c in enumerate(named)}
        index = np.fromiter((lookup.get(str(v), len(named)) for v in values), dtype=np.int64, count=values.size)
    return np.bincount(index, minlength=len(categories))


def proportions(counts: np.ndarray, pseudo: float = 0.0) -> np.ndarray:
    """``(counts + pseudo) / sum`` along the last axis (pseudo > 0 is additive/Laplace smoothing)."""
    counts = np.asarray(counts, dtype=np.float64) + pseudo
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Population Stability Index ``sum((c - r) * ln(c / r))`` of proportions (no zeros: smooth first).

    Symmetric; equals KL(c||r) + KL(r||c). 0.1 / 0.2 are the conventional warn / alert levels.
    """
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    return np.sum((current - reference) * np.log(current / reference), axis=-1)


def kl_divergence(current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """KL(current || reference) in nats: the extra cost of coding current traffic with the reference's model.

    Terms with ``current == 0`` contribute 0; a zero in ``reference`` where current is not gives inf
    (pass smoothed proportions).
    """
    current, reference = np.asarray(current, np.float64), np.asarray(reference, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(current > 0, current * np.log(current / reference), 0.0)
    return np.sum(terms, axis=-1)


def js_distance(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance, base 2: sqrt of the JS divergence, in [0, 1]; 1 for disjoint supports."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    mixture = 0.5 * (reference + current)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(reference > 0, reference * np.log2(reference / mixture), 0.0)
        right = np.where(current > 0, current * np.log2(current / mixture), 0.0)
    divergence = 0.5 * (np.sum(left, axis=-1) + np.sum(right, axis=-1))
    return np.sqrt(np.clip(divergence, 0.0, 1.0))  # clip: rounding can leave -1e-17


def psi_noise_floor(n_bins: int, n_reference: int, n_current: int) -> float:
    """Expected PSI of two samples of one distribution: about ``(B - 1) * (1/n_ref + 1/n_cur)``.

    From the first-order expansion PSI ~ sum((c - r)^2 / r). At 10 bins and 100 current records
    this is ~0.09, close to the 0.1 warn level: why small windows are not judged on PSI alone.
    """
    return float((n_bins - 1) * (1.0 / max(n_reference, 1) + 1.0 / max(n_current, 1)))


def divergences(reference_counts: np.ndarray, current_counts: np.ndarray, pseudo: float) -> dict[str, np.ndarray]:
    """PSI and KL on smoothed proportions, JS on raw ones, from two histograms on the same bins."""
    ref_s, cur_s = proportions(reference_counts, pseudo), proportions(current_counts, pseudo)
    return {
        "psi": psi(ref_s, cur_s),
        "kl": kl_divergence(cur_s, ref_s),
        "js": js_distance(proportions(reference_counts), proportions(current_counts)),
    }


def ks_test(reference_sample: np.ndarray, current: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov (scipy's ``ks_2samp``, two-sided, automatic exact/asymptotic)."""
    result = sps.ks_2samp(np.asarray(reference_sample, np.float64), np.asarray(current, np.float64))
    return TestResult("ks", float(result.statistic), float(result.pvalue), float(result.statistic))


def chi2_test(reference_counts: np.ndarray, current_counts: np.ndarray, design_effect: float = 1.0) -> TestResult:
    """Chi-square test of homogeneity on the 2 x K table (reference, current) x categories.

    Homogeneity, not goodness of fit: the reference is a sample too, so its noise is accounted for,
    and a category absent from the reference does not divide by zero. Categories empty on both
    sides are dropped (they carry no information and scipy rejects zero expected counts).
    Effect size: Cramér's V = sqrt(chi2 / N) for a 2-row table (of the raw statistic: it describes
    the counts). With ``design_effect`` d > 1 (counts of correlated units, e.g. tokens clustered in
    prompts) the statistic is the Rao-Scott first-order corrected chi2 / d, and p is taken from it.
    """
    table = np.vstack([reference_counts, current_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return TestResult("chi2", 0.0, 1.0, 0.0, 0)
    chi2, _, dof, _ = sps.chi2_contingency(table, correction=False)
    cramers_v = float(np.sqrt(chi2 / table.sum()))
    corrected = float(chi2) / max(design_effect, 1.0)
    return TestResult("chi2", corrected, float(sps.chi2.sf(corrected, dof)), cramers_v, int(dof))
