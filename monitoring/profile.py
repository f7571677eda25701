"""Reference profiles: bins fitted on one half of the reference, counts and a KS sample from the other half."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from llmops.infra.config import MonitorConfig
from llmops.monitoring.batch import Batch, Tokenize, take
from llmops.monitoring.classifier import reference_texts
from llmops.monitoring.records import (
    SEMANTIC_SIGNAL,
    CategoricalProfile,
    ContinuousProfile,
    ReferenceProfile,
    SummaryStats,
)
from llmops.monitoring.semantic import SentenceEmbedder, reference_distances
from llmops.monitoring.signals import OPTIONAL_SIGNALS, OTHER, SIGNALS, rows_batch, skip_reason
from llmops.monitoring.stats import bin_counts, category_counts
from llmops.monitoring.tokens import IdLookup, common_token_ids, design_effect, rare_token_share, top_k_ids

_SAMPLE_SEED = 0  # fixed so the same reference records always give the same profile


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


def continuous_profile(values: np.ndarray, n_bins: int, sample_size: int, tail: float = 0.0, *,
                       fit: Optional[np.ndarray] = None) -> ContinuousProfile:
    """Bins fitted on ``fit`` (default: ``values`` itself), counts, KS sample and summary of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    edges = quantile_edges(np.asarray(fit if fit is not None else values, np.float64), n_bins, tail)
    sample = values
    if values.size > sample_size:
        rng = np.random.default_rng(_SAMPLE_SEED)
        sample = values[rng.choice(values.size, size=sample_size, replace=False)]
    return ContinuousProfile(edges=edges.tolist(), counts=bin_counts(values, edges).tolist(),
                             sample=np.sort(sample).tolist(), stats=_summary(values))


def categorical_profile(values: np.ndarray, top_k: int, *, count: Optional[np.ndarray] = None) -> CategoricalProfile:
    """Top-K categories of ``values`` by count (ties: smaller value first) plus '__other__', counted on ``count``.

    ``count`` defaults to ``values`` itself (fitting and counting one sample: see :func:`build_profile`).
    """
    uniques, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.lexsort((np.arange(uniques.size), -counts))[:top_k]  # stable: count desc, then value
    categories = [str(u) for u in uniques[order]] + [OTHER]
    if count is None:
        kept = counts[order]
        return CategoricalProfile(categories=categories, counts=kept.tolist() + [int(counts.sum() - kept.sum())])
    return CategoricalProfile(categories=categories, counts=category_counts(np.asarray(count), categories).tolist())


def split_halves(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic halves (fit, count) of the records: indices ranked by a hash of the prompt.

    The prompt, not the record id: re-scoring the same documents gives new ids but the same split,
    and duplicate prompts land side by side instead of straddling the halves at random.
    """
    digests = [hashlib.blake2b(str(r.get("prompt", "")).encode("utf-8", "replace"), digest_size=8).digest()
               if isinstance(r, dict) else b"" for r in records]
    order = sorted(range(len(records)), key=lambda i: (digests[i], i))
    half = len(records) // 2
    return np.sort(np.array(order[:half], np.int64)), np.sort(np.array(order[half:], np.int64))


def _finite(column: np.ndarray) -> np.ndarray:
    return column[np.isfinite(column)]


def _token_profiles(fit: Batch, count: Batch, cfg: MonitorConfig):
    """(rare_token_share values to fit on, to count; token_frequency profile; common ids), or Nones.

    rare_token_share is cross-fitted: the counted values use the fitting half's common set (the one
    windows are scored with), and the bin edges are fitted on the fitting half scored with the
    counting half's set, so neither side is measured against a set chosen on itself.
    """
    if fit.token_ids.size == 0 or count.token_ids.size == 0:
        return None, None, None, None
    common = common_token_ids(fit.token_ids, cfg.common_token_coverage)
    mirror = common_token_ids(count.token_ids, cfg.common_token_coverage)
    rare_fit = rare_token_share(fit.token_ids, fit.token_lengths, mirror)
    rare_count = rare_token_share(count.token_ids, count.token_lengths, common)
    top = top_k_ids(fit.token_ids, cfg.top_k_tokens)
    lookup = IdLookup(top, default=top.size)
    counts = np.bincount(lookup.codes(count.token_ids), minlength=top.size + 1)
    deff = design_effect(lookup.codes(fit.token_ids), fit.token_lengths, top.size + 1)
    freq = CategoricalProfile(categories=[str(i) for i in top] + [OTHER], counts=counts.tolist(), design_effect=deff)
    return _finite(rare_fit), _finite(rare_count), freq, common


def profile_from_halves(fit: Batch, count: Batch, cfg: MonitorConfig, *, model_name: str, model_version: int,
                        has_tokenizer: bool) -> ReferenceProfile:
    """A profile fitted on ``fit`` and counted on ``count`` (see :func:`build_profile`)."""
    continuous, categorical, skipped = {}, {}, {}
    columns = {n: (_finite(fit.numbers[n]), _finite(count.numbers[n])) for n in fit.numbers}
    rare_fit, rare_count, freq, common = _token_profiles(fit, count, cfg)
    if rare_fit is not None:
        columns["rare_token_share"] = (rare_fit, rare_count)
    for name, (fitting, counted) in columns.items():
        if fitting.size and counted.size:
            continuous[name] = continuous_profile(counted, cfg.n_bins, cfg.ks_sample_size, cfg.tail_quantile,
                                                  fit=fitting)
    fit_reasons = np.array(fit.stop_labels + [None], dtype=object)[fit.stop_codes]
    count_reasons = np.array(count.stop_labels + [None], dtype=object)[count.stop_codes]
    if any(r is not None for r in fit_reasons) and any(r is not None for r in count_reasons):
        categorical["stop_reason"] = categorical_profile(fit_reasons[fit_reasons != None], cfg.top_k_tokens,  # noqa: E711
                                                         count=count_reasons[count_reasons != None])  # noqa: E711
    if freq is not None:
        categorical["token_frequency"] = freq
    n = fit.n + count.n
    for name in SIGNALS:
        if name not in continuous and name not in categorical and name not in OPTIONAL_SIGNALS:
            skipped[name] = skip_reason(name, n, has_tokenizer)
    return ReferenceProfile(model_name=model_name, model_version=model_version, created_at=datetime.now(timezone.utc),
                            n_records=n, n_bins=cfg.n_bins, tail_quantile=cfg.tail_quantile,
                            top_k_tokens=cfg.top_k_tokens, fit_records=fit.n, count_records=count.n,
                            common_token_coverage=cfg.common_token_coverage if common is not None else None,
                            common_tokens=common.tolist() if common is not None else [],
                            continuous=continuous, categorical=categorical, skipped=skipped)


def build_profile(records: Sequence[dict], tokenize: Optional[Tokenize], cfg: MonitorConfig, *,
                  model_name: str, model_version: int, embedder: Optional[SentenceEmbedder] = None) -> ReferenceProfile:
    """Build the reference profile from records scored on held-out validation documents.

    The records are split in two deterministic halves (:func:`split_halves`): bin edges, tail
    edges, the top-K tokens and the common-token set are fitted on one, the bin and category counts,
    KS samples and summaries come from the other. A statistic fitted on a sample describes that
    sample better than a fresh one (quantile edges hug its values, the top-K tokens are the ones it
    happens to over-represent, every token it contains is "common"), so counting the fitting sample
    makes every future window look farther away than it is.

    Args:
        records: Traffic-format records (docs/contracts.md) produced by the served model's own code.
        tokenize: The served tokenizer, batch form, for records without ``prompt_token_ids``.
        cfg: Bins, top-K tokens, common-token coverage and KS sample size are read from here.
        model_name: Registered model the profile belongs to.
        model_version: Its version.
        embedder: A :class:`llmops.monitoring.semantic.SentenceEmbedder` to add ``semantic_distance`` (None: off).

    Raises:
        ValueError: Fewer than ``cfg.min_samples`` records: the bins would be noise.
        RecordError: A malformed record (the message names its id and field).
    """
    if len(records) < cfg.min_samples:
        raise ValueError(f"a reference profile needs at least min_samples={cfg.min_samples} records, "
                         f"got {len(records)}")
    batch = rows_batch(records, tokenize)
    fit_rows, count_rows = split_halves(records)
    profile = profile_from_halves(take(batch, fit_rows), take(batch, count_rows), cfg, model_name=model_name,
                                  model_version=model_version, has_tokenizer=tokenize is not None)
    variants = {r.get("variant") for r in records if isinstance(r, dict)}
    if len(variants) == 1:
        profile = profile.model_copy(update={"model_variant": variants.pop()})
    if cfg.domain_classifier:
        texts = reference_texts([r.get("prompt") if isinstance(r, dict) else None for r in records],
                                cfg.classifier_reference_size)
        profile = profile.model_copy(update={"texts": texts})
    return profile if embedder is None else with_semantic(profile, records, fit_rows, count_rows, embedder, cfg)


def with_semantic(profile: ReferenceProfile, records: Sequence[dict], fit_rows: np.ndarray, count_rows: np.ndarray,
                  embedder: SentenceEmbedder, cfg: MonitorConfig) -> ReferenceProfile:
    """``profile`` plus ``semantic_distance``: the centroid fitted on the fitting half, the counted half scored."""
    fitting, counted, semantic = reference_distances([records[i]["prompt"] for i in fit_rows],
                                                     [records[i]["prompt"] for i in count_rows], embedder)
    binned = continuous_profile(counted, cfg.n_bins, cfg.ks_sample_size, cfg.tail_quantile, fit=fitting)
    return profile.model_copy(update={"continuous": {**profile.continuous, SEMANTIC_SIGNAL: binned},
                                      "semantic": semantic})
