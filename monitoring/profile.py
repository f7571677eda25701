"""Reference profiles: bins, counts, a bounded KS sample and summary stats per signal, fixed at training time."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.config import MonitorConfig
from monitoring.signals import OTHER, SIGNALS, Extraction, Tokenize, extract
from monitoring.stats import bin_counts

_SAMPLE_SEED = 0  # fixed so the same reference records always give the same profile


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SummaryStats(_Frozen):
    n: int
    mean: float
    std: float
    min: float
    p05: float
    p50: float
    p95: float
    max: float


class ContinuousProfile(_Frozen):
    """Reference bins of a continuous signal: right-closed, open-ended at both ends.

    Bin 0 is ``(-inf, edges[0]]``, bin i is ``(edges[i-1], edges[i]]``, the last ``(edges[-1], inf)``.
    """

    edges: list[float] = Field(description="Inner bin edges: deduplicated reference quantiles, increasing")
    counts: list[int] = Field(description="Reference values per bin (len(edges) + 1)")
    sample: list[float] = Field(description="Sorted deterministic subsample of reference values, for KS")
    stats: SummaryStats


class CategoricalProfile(_Frozen):
    """Reference categories of a categorical signal; the last one is the catch-all '__other__'."""

    categories: list[str]
    counts: list[int]


class ReferenceProfile(_Frozen):
    """What a window is compared against; monitoring a window costs O(window), never O(reference)."""

    schema_version: Literal[1] = 1
    model_name: str
    model_version: int
    created_at: datetime
    n_records: int
    n_bins: int
    tail_quantile: float = 0.0
    top_k_tokens: int
    continuous: dict[str, ContinuousProfile]
    categorical: dict[str, CategoricalProfile]
    skipped: dict[str, str] = Field(default_factory=dict, description="Signals with no reference values, and why")

    @property
    def signals(self) -> list[str]:
        """Profiled signal names, in registry order."""
        return [n for n in SIGNALS if n in self.continuous or n in self.categorical]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ReferenceProfile":
        """Parse a profile; a clear ValueError when the text is not one."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"not a valid reference profile: {exc.error_count()} error(s); first: "
                             f"{'.'.join(map(str, exc.errors()[0]['loc']))}: {exc.errors()[0]['msg']}") from None


def quantile_edges(values: np.ndarray, n_bins: int, tail: float = 0.0) -> np.ndarray:
    """Inner edges at the reference's 1/n_bins quantiles (plus ``tail`` and ``1 - tail``), deduplicated.

    ``inverted_cdf`` quantiles are observed values, so discrete signals (token counts) get edges on
    their own values and ties merge into one bin instead of leaving empty bins between integers.
    The tail edges exist because equal-mass bins dilute tail drift: 10% of prompts becoming very
    long moves mass only into the top decile (PSI ~0.07), but into a 1% tail bin it is PSI ~0.24.
    """
    levels = np.arange(1, n_bins) / n_bins  # not linspace: 3 * (1/10) > 0.3 would shift an edge by one value
    if 0 < tail < 1 / n_bins:
        levels = np.concatenate([[tail], levels, [1 - tail]])
    return np.unique(np.quantile(values, levels, method="inverted_cdf"))


def _summary(values: np.ndarray) -> SummaryStats:
    p05, p50, p95 = np.quantile(values, [0.05, 0.5, 0.95])
    return SummaryStats(n=int(values.size), mean=float(values.mean()), std=float(values.std()),
                        min=float(values.min()), p05=float(p05), p50=float(p50), p95=float(p95),
                        max=float(values.max()))


def continuous_profile(values: np.ndarray, n_bins: int, sample_size: int, tail: float = 0.0) -> ContinuousProfile:
    """Bins, counts, KS sample and summary of one continuous signal's reference values."""
    values = np.asarray(values, dtype=np.float64)
    edges = quantile_edges(values, n_bins, tail)
    sample = values
    if values.size > sample_size:
        rng = np.random.default_rng(_SAMPLE_SEED)
        sample = values[rng.choice(values.size, size=sample_size, replace=False)]
    return ContinuousProfile(edges=edges.tolist(), counts=bin_counts(values, edges).tolist(),
                             sample=np.sort(sample).tolist(), stats=_summary(values))


def categorical_profile(values: np.ndarray, top_k: int) -> CategoricalProfile:
    """The reference's top-K categories by count (ties: smaller value first) plus '__other__'."""
    uniques, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.lexsort((np.arange(uniques.size), -counts))[:top_k]  # stable: count desc, then value
    kept = counts[order]
    return CategoricalProfile(categories=[str(u) for u in uniques[order]] + [OTHER],
                              counts=kept.tolist() + [int(counts.sum() - kept.sum())])


def profile_from_extraction(values: Extraction, cfg: MonitorConfig, *, model_name: str, model_version: int) -> ReferenceProfile:
    """A profile from already-extracted reference values (see :func:`build_profile`)."""
    continuous, categorical = {}, {}
    for name, column in values.items():
        if SIGNALS[name].kind == "continuous":
            continuous[name] = continuous_profile(column, cfg.n_bins, cfg.ks_sample_size, cfg.tail_quantile)
        else:
            categorical[name] = categorical_profile(column, cfg.top_k_tokens)
    return ReferenceProfile(model_name=model_name, model_version=model_version,
                            created_at=datetime.now(timezone.utc), n_records=values.n_records,
                            n_bins=cfg.n_bins, tail_quantile=cfg.tail_quantile, top_k_tokens=cfg.top_k_tokens, continuous=continuous,
                            categorical=categorical, skipped=dict(values.skipped))


def build_profile(records: Sequence[dict], tokenize: Optional[Tokenize], cfg: MonitorConfig, *,
                  model_name: str, model_version: int) -> ReferenceProfile:
    """Build the reference profile from records scored on held-out validation documents.

    Args:
        records: Traffic-format records (docs/contracts.md) produced by the served model's own code.
        tokenize: The served tokenizer, batch form; None leaves ``token_frequency`` out.
        cfg: Bins (``n_bins``), top-K tokens and KS sample size are read from here.
        model_name: Registered model the profile belongs to.
        model_version: Its version.

    Raises:
        ValueError: Fewer than ``cfg.min_samples`` records: the bins would be noise.
        RecordError: A malformed record (the message names its id and field).
    """
    if len(records) < cfg.min_samples:
        raise ValueError(f"a reference profile needs at least min_samples={cfg.min_samples} records, got {len(records)}")
    return profile_from_extraction(extract(records, tokenize), cfg, model_name=model_name, model_version=model_version)
