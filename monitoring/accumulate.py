"""Accumulating a window batch by batch on the profile's fixed bins: memory independent of the window size.

An accumulator's state (:class:`AccumulatorState`) merges exactly into another accumulator of the same
profile: counts add, sums are kept exactly, samples are bottom-k by partition-stable keys. So a window
accumulated partition by partition, in any process and merged in any order, equals one accumulated
in one pass.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from llmops.monitoring.batch import Batch
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.stats import bin_counts
from llmops.monitoring.tokens import IdLookup, rare_token_share

SAMPLE_SEED = 0  # sampling keys are drawn from this seed (and the partition): the same window gives the same sample


def sampling_keys(seed: int = SAMPLE_SEED, partition: Optional[str] = None) -> np.random.Generator:
    """The generator sampling keys are drawn from, one key per record, in the order the records are read.

    With ``partition`` (a traffic hour's prefix, ``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>``) the keys
    of that partition's records: a function of the partition and of the record's index among the
    partition's accumulated records only, so a partition gives the same keys whichever process reads it
    and whatever else the window holds. Without, one stream for records that have no partition (an
    in-memory window).
    """
    if partition is None:
        return np.random.default_rng(seed)
    digest = hashlib.blake2b(partition.encode("utf-8"), digest_size=8).digest()  # not hash(): salted per process
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


class ExactSum:
    """A sum of floats kept exactly, as non-overlapping partials (Shewchuk's algorithm, the one behind ``math.fsum``).

    Its value is the exact sum correctly rounded, so the same terms added or merged in any order
    give the same float, bit for bit (a running float sum depends on the order).
    """

    def __init__(self, terms: Sequence[float] = ()):
        self.partials: list[float] = []
        self.special = 0.0  # inf or nan added (an overflowing batch sum): the sum is that, exact or not
        for x in terms:
            self.add(x)

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            self.special += x
            return
        i = 0
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                self.partials[i] = lo
                i += 1
            x = hi
        self.partials[i:] = [x]

    def merge(self, other: ExactSum) -> None:
        for x in other.terms():
            self.add(x)

    def terms(self) -> list[float]:
        """Floats whose exact sum is this sum (what :class:`AccumulatorState` carries)."""
        return [*self.partials, self.special] if self.special else list(self.partials)

    @property
    def value(self) -> float:
        return math.fsum(self.partials) + self.special if self.special else math.fsum(self.partials)


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
        if not keys.size:
            return
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

    def merge(self, other: Reservoir) -> None:
        """Take in another reservoir's sample: the bottom ``size`` of both, whatever the order of merging."""
        self.add(other.values, other.keys)


class PromptSample:
    """A uniform sample without replacement of at most ``size`` prompts (bottom-k by key, as :class:`Reservoir`),
    and how many prompts it was drawn from; mergeable like the KS reservoirs."""

    def __init__(self, size: int):
        self.reservoir, self.seen = Reservoir(size), 0

    def add(self, prompts: Sequence[str], keys: np.ndarray) -> None:
        self.reservoir.add(np.asarray(list(prompts), dtype=object), keys)
        self.seen += len(prompts)

    def merge(self, other: PromptSample) -> None:
        self.reservoir.merge(other.reservoir)
        self.seen += other.seen

    def prompts(self) -> list[str]:
        """The sample in key order: any prefix of it is a uniform sample too."""
        return list(self.reservoir.values[np.argsort(self.reservoir.keys)])


@dataclass
class AccumulatorState:
    """What a :class:`WindowAccumulator` has accumulated, without its profile: a partial to merge elsewhere.

    Attributes:
        counts: Per signal, counts per bin or category.
        n: Per signal, values counted.
        missing: Per signal, records without a value.
        sums: Per continuous signal, floats whose exact sum is the sum of its values (:meth:`ExactSum.terms`).
        samples: Per continuous signal, the reservoir's values and keys.
        n_records: Records accumulated.
    """

    counts: dict[str, np.ndarray]
    n: dict[str, int]
    missing: dict[str, int]
    sums: dict[str, list[float]]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]
    n_records: int = 0


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
        self._sum = {n: ExactSum() for n in self._edges}
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
            self._sum[name].add(float(values.sum()))
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
                mean = self._sum[name].value / n if n else None
                out[name] = SignalSummary(counts.copy(), n, self._missing[name], mean,
                                          np.sort(self._reservoirs[name].values))
            else:
                out[name] = SignalSummary(counts.copy(), n, self._missing[name])
        return out

    def state(self) -> AccumulatorState:
        """A copy of what was accumulated, to merge into another accumulator of the same profile (:meth:`merge`)."""
        return AccumulatorState(
            counts={n: c.copy() for n, c in self._counts.items()}, n=dict(self._n), missing=dict(self._missing),
            sums={n: s.terms() for n, s in self._sum.items()},
            samples={n: (r.values.copy(), r.keys.copy()) for n, r in self._reservoirs.items()},
            n_records=self.n_records)

    def merge(self, state: AccumulatorState) -> None:
        """Add another accumulator's state, of the same profile and sample size: exactly, in any order.

        Counts, value counts and missing counts add; sums are exact (:class:`ExactSum`), so means do
        not depend on the order; each KS sample is the bottom ``sample_size`` keys of both.
        """
        if sorted(state.counts) != sorted(self._counts) or any(c.shape != self._counts[n].shape
                                                               for n, c in state.counts.items()):
            raise ValueError(f"cannot merge an accumulator of signals {sorted(state.counts)} into one of "
                             f"{sorted(self._counts)}: partials must come from the same reference profile")
        for name, counts in state.counts.items():
            self._counts[name] += counts
            self._n[name] += state.n[name]
            self._missing[name] += state.missing[name]
        for name, terms in state.sums.items():
            self._sum[name].merge(ExactSum(terms))
        for name, (values, keys) in state.samples.items():
            self._reservoirs[name].add(values, keys)
        self.n_records += state.n_records

    def state_nbytes(self) -> int:
        """Bytes held by the accumulated state: bounded by the bins and reservoirs, not the window."""
        arrays = [*self._counts.values(), *(r.values for r in self._reservoirs.values()),
                  *(r.keys for r in self._reservoirs.values())]
        return int(sum(a.nbytes for a in arrays))
