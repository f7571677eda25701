"""Accumulating a window batch by batch on the profile's fixed bins: memory independent of the window size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from llmops.monitoring.batch import Batch
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.stats import bin_counts
from llmops.monitoring.tokens import IdLookup, rare_token_share

SAMPLE_SEED = 0  # sampling keys are drawn from this seed in stream order: the same window gives the same sample


def sampling_keys(seed: int = SAMPLE_SEED) -> np.random.Generator:
    """The generator a window's sampling keys are drawn from, one key per record, in stream order."""
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class SignalSummary:
    """What the statistics of one signal need from a window.

    Attributes:
        counts: Values per bin (continuous) or category (categorical) of the profile.
        n: Values counted (records, or token occurrences for token_frequency).
        missing: Records that had no value.
        mean: Mean of the values (continuous; None when n == 0).
        sample: Sorted uniform sample of at most ``sample_size`` values, for KS (continuous).
    """

    counts: np.ndarray
    n: int
    missing: int
    mean: Optional[float] = None
    sample: Optional[np.ndarray] = None


class Reservoir:
    """A uniform sample without replacement of at most ``size`` values: those with the smallest keys.

    Keys are uniform and drawn once per record in stream order, so the sample is the same however
    the stream was cut into batches (bottom-k sampling; merging two reservoirs is taking the
    bottom k of both).
    """

    def __init__(self, size: int):
        self.size = size
        self.values = np.zeros(0)
        self.keys = np.zeros(0)

    def add(self, values: np.ndarray, keys: np.ndarray) -> None:
        if self.keys.size == self.size:  # full: only keys below the largest kept one can enter
            enter = keys < self.keys.max()
            values, keys = values[enter], keys[enter]
        if not keys.size:
            return
        values, keys = np.concatenate([self.values, values]), np.concatenate([self.keys, keys])
        if keys.size > self.size:
            keep = np.argpartition(keys, self.size - 1)[:self.size]
            values, keys = values[keep], keys[keep]
        self.values, self.keys = values, keys


class WindowAccumulator:
    """Counts on the profile's bins and categories, a KS reservoir, running sums and the record count.

    Args:
        profile: The reference profile whose bins, categories and common-token set are applied.
        sample_size: Reservoir size per continuous signal (``MonitorConfig.ks_window_sample``).
    """

    def __init__(self, profile: ReferenceProfile, sample_size: int):
        self.profile = profile
        self.n_records = 0
        self._edges = {n: np.asarray(p.edges, np.float64) for n, p in profile.continuous.items()}
        self._counts = {n: np.zeros(len(e) + 1, np.int64) for n, e in self._edges.items()}
        for name, cat in profile.categorical.items():
            self._counts[name] = np.zeros(len(cat.categories), np.int64)
        self._n = dict.fromkeys(self._counts, 0)
        self._missing = dict.fromkeys(self._counts, 0)
        self._sum = dict.fromkeys(self._edges, 0.0)
        self._reservoirs = {n: Reservoir(sample_size) for n in self._edges}
        self._common = IdLookup(np.asarray(profile.common_tokens, np.int64), default=-1)
        freq = profile.categorical.get("token_frequency")
        top = np.array([int(c) for c in freq.categories[:-1]], np.int64) if freq else np.zeros(0, np.int64)
        self._top = IdLookup(top, default=top.size)

    def add(self, batch: Batch) -> None:
        """Count one batch of records (its ``keys`` must be set)."""
        if batch.keys is None:
            raise ValueError("a batch needs sampling keys to be accumulated")
        columns = {n: batch.numbers[n] for n in self._edges if n in batch.numbers}
        if "rare_token_share" in self._edges:
            columns["rare_token_share"] = rare_token_share(batch.token_ids, batch.token_lengths, self._common)
        for name, column in columns.items():
            present = np.isfinite(column)
            values = column[present]
            self._counts[name] += bin_counts(values, self._edges[name])
            self._n[name] += values.size
            self._missing[name] += column.size - values.size
            self._sum[name] += float(values.sum())
            self._reservoirs[name].add(values, batch.keys[present])
        if "stop_reason" in self._counts:
            self._add_stop_reasons(batch)
        if "token_frequency" in self._counts:
            self._counts["token_frequency"] += np.bincount(self._top.codes(batch.token_ids),
                                                           minlength=self._top.default + 1)
            self._n["token_frequency"] += batch.token_ids.size
            self._missing["token_frequency"] += int((batch.token_lengths < 0).sum())
        self.n_records += batch.n

    def _add_stop_reasons(self, batch: Batch) -> None:
        categories = self.profile.categorical["stop_reason"].categories
        index = {c: i for i, c in enumerate(categories[:-1])}
        remap = np.array([index.get(label, len(categories) - 1) for label in batch.stop_labels], np.int64)
        present = batch.stop_codes >= 0
        self._counts["stop_reason"] += np.bincount(remap[batch.stop_codes[present]], minlength=len(categories))
        self._n["stop_reason"] += int(present.sum())
        self._missing["stop_reason"] += int(batch.n - present.sum())

    def summaries(self) -> dict[str, SignalSummary]:
        """Per profiled signal, what was accumulated so far."""
        out = {}
        for name, counts in self._counts.items():
            n = self._n[name]
            if name in self._edges:
                out[name] = SignalSummary(counts.copy(), n, self._missing[name], self._sum[name] / n if n else None,
                                          np.sort(self._reservoirs[name].values))
            else:
                out[name] = SignalSummary(counts.copy(), n, self._missing[name])
        return out

    def state_nbytes(self) -> int:
        """Bytes held by the accumulated state: bounded by the bins and reservoirs, not the window."""
        arrays = [*self._counts.values(), *(r.values for r in self._reservoirs.values()),
                  *(r.keys for r in self._reservoirs.values())]
        return int(sum(a.nbytes for a in arrays))
