"""Token-id statistics in numpy: the common-token set, rare-token shares, top-K buckets and their design effect."""
from __future__ import annotations

import numpy as np


def common_token_ids(token_ids: np.ndarray, coverage: float) -> np.ndarray:
    """The smallest set of ids covering at least ``coverage`` of the occurrences in ``token_ids``, sorted.

    Ids are taken by count, most frequent first (ties: smaller id first, so the set is deterministic).
    """
    if token_ids.size == 0:
        return np.zeros(0, np.int64)
    ids, counts = np.unique(token_ids, return_counts=True)
    order = np.lexsort((ids, -counts))
    covered = np.cumsum(counts[order]) / token_ids.size
    size = int(np.searchsorted(covered, coverage - 1e-12, side="left")) + 1  # first prefix reaching coverage
    return np.sort(ids[order[:size]])


class IdLookup:
    """Maps token ids to small integers through a dense table: O(1) per id, no sorting or hashing.

    Args:
        ids: The ids to recognise.
        default: Code of every other id (including ids beyond the largest known one).
    """

    def __init__(self, ids: np.ndarray, default: int):
        ids = np.asarray(ids, np.int64)
        self.default = default
        self.table = np.full(int(ids.max()) + 1 if ids.size else 0, default, dtype=np.int64)
        self.table[ids] = np.arange(ids.size)

    def codes(self, token_ids: np.ndarray) -> np.ndarray:
        """Position of each id in ``ids``, or ``default``."""
        known = token_ids < self.table.size  # ids are validated non-negative
        out = np.full(token_ids.size, self.default, dtype=np.int64)
        out[known] = self.table[token_ids[known]]
        return out


def rare_token_share(token_ids: np.ndarray, lengths: np.ndarray, common: np.ndarray | IdLookup) -> np.ndarray:
    """Per record, the share of its tokens outside ``common``; NaN for records without tokens.

    Args:
        token_ids: Flattened ids of the records that have ids.
        lengths: Ids per record (-1: none).
        common: The common-token ids, or an :class:`IdLookup` of them (default code -1).
    """
    lookup = common if isinstance(common, IdLookup) else IdLookup(common, default=-1)
    rare = lookup.codes(token_ids) < 0
    counts = np.maximum(lengths, 0)
    owner = np.repeat(np.arange(lengths.size), counts)
    rare_per_record = np.bincount(owner, weights=rare, minlength=lengths.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, rare_per_record / counts, np.nan)


def top_k_ids(token_ids: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most frequent ids (ties: smaller id first), most frequent first."""
    ids, counts = np.unique(token_ids, return_counts=True)
    return ids[np.lexsort((ids, -counts))[:k]]


def design_effect(codes: np.ndarray, lengths: np.ndarray, n_categories: int) -> float:
    """Mean design effect of category shares when tokens come in records (clusters), not independently.

    Tokens of one prompt are correlated (a docstring about sockets repeats "socket"), so the
    shares of a window vary more than a multinomial sample of as many tokens would. For category
    k with share p_k, the ratio estimator's variance over records is
    ``sum_i (x_ik - p_k m_i)^2 / (sum_i m_i)^2`` (x_ik: its count in record i, m_i: the record's
    tokens); divided by the multinomial ``p_k (1 - p_k) / sum_i m_i`` it gives d_k. The mean
    ``sum_k (1 - p_k) d_k / (K - 1)`` is the first-order Rao-Scott correction: it divides the
    chi-square statistic and multiplies the PSI noise floor. At least 1.

    Args:
        codes: Category of every token occurrence, in record order.
        lengths: Tokens per record (records without tokens: 0 or -1).
        n_categories: K.
    """
    m = np.maximum(lengths, 0)
    m = m[m > 0]
    n, total = m.size, m.sum()
    if n < 2 or n_categories < 2:
        return 1.0
    owner = np.repeat(np.arange(n), m)
    x = np.bincount(owner * n_categories + codes, minlength=n * n_categories).reshape(n, n_categories)
    p = x.sum(axis=0) / total
    cluster_var = n / (n - 1) * ((x - np.outer(m, p)) ** 2).sum(axis=0) / total ** 2
    srs_var = p * (1 - p) / total
    d = np.divide(cluster_var, srs_var, out=np.ones_like(p), where=srs_var > 0)
    return max(1.0, float(((1 - p) * d).sum() / (n_categories - 1)))
