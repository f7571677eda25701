"""The champion/challenger gate: a paired bootstrap over documents of candidate minus production bits per byte."""
from __future__ import annotations

from typing import Optional

import numpy as np

from llmops.infra.config import AdaptConfig, GateConfig
from llmops.models.evaluation.scoring import LN2, bits_per_byte
from llmops.models.records import DocScores, GateDecision, GateSlice


def paired_interval(candidate: DocScores, production: DocScores, cfg: GateConfig) -> tuple[float, float, float]:
    """(difference, CI low, CI high) of candidate - production bits/byte: a paired bootstrap over documents."""
    docs = len(candidate.tokens)
    if len(production.tokens) != docs:
        raise ValueError(f"gate needs both models scored on the same documents ({docs} vs {len(production.tokens)})")
    c, p, b = (np.asarray(v, dtype=float) for v in (candidate.nll_nats, production.nll_nats, candidate.bytes))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, docs, size=(cfg.bootstrap_samples, docs))
    diffs = ((c[idx] - p[idx]).sum(1)) / LN2 / b[idx].sum(1)
    tail = (1 - cfg.confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return bits_per_byte(candidate) - bits_per_byte(production), float(low), float(high)


def gate(candidate: DocScores, production: Optional[DocScores], cfg: GateConfig,
         production_version: Optional[int] = None, candidate_version: Optional[int] = None) -> GateDecision:
    """Promote a candidate that beats production by ``min_improvement`` bits/byte with confidence.

    Both models are scored on the same documents; a paired bootstrap over documents gives the
    interval of (candidate - production) bits per byte. With no production model the candidate
    must score at most ``max_bits_per_byte``.
    """
    cand_bpb = bits_per_byte(candidate)
    docs = len(candidate.tokens)
    name = _name(candidate_version)
    if production is None:
        ok = cand_bpb <= cfg.max_bits_per_byte
        return GateDecision(
            promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
            threshold=cfg.max_bits_per_byte, documents=docs,
            reason=(f"no production model; {name} {cand_bpb:.4f} bits/byte "
                    f"{'meets' if ok else 'misses'} the bound {cfg.max_bits_per_byte}"),
        )
    diff, low, high = paired_interval(candidate, production, cfg)
    prod_bpb = bits_per_byte(production)
    ok = bool(high < -cfg.min_improvement)
    verdict = "beats" if ok else "does not beat"
    return GateDecision(
        promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
        production_bits_per_byte=prod_bpb, production_version=production_version, difference=diff,
        ci_low=low, ci_high=high, threshold=-cfg.min_improvement, documents=docs,
        reason=(f"{name} {cand_bpb:.4f} vs production v{production_version} {prod_bpb:.4f} bits/byte: "
                f"difference {diff:+.4f}, {cfg.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]; "
                f"{verdict} production by the required {cfg.min_improvement} bits/byte"),
    )


def adaptation_gate(new: tuple[DocScores, DocScores], old: tuple[DocScores, DocScores], cfg: GateConfig,
                    adapt: AdaptConfig, production_version: int,
                    candidate_version: Optional[int] = None) -> GateDecision:
    """Promote an adapted candidate that is better on held-out drifted traffic and no worse on production's test split.

    ``new`` and ``old`` are (candidate, production) scores on the held-out traffic and on the test split.
    The new slice must improve by ``adapt.min_improvement`` (the CI's upper end below minus it); on the old
    slice the CI's upper end must stay below ``adapt.max_regression`` of production's bits/byte.
    """
    slices = [
        _slice("held-out traffic", "validation", "improve", *new, -adapt.min_improvement, cfg),
        _slice("production test split", "test", "no_regression", *old,
               adapt.max_regression * bits_per_byte(old[1]), cfg),
    ]
    ok = all(s.passed for s in slices)
    old_slice = slices[1]
    words = "; ".join(
        f"{s.name} {s.candidate_bits_per_byte:.4f} vs {s.production_bits_per_byte:.4f} "
        f"({s.difference:+.4f}, CI [{s.ci_low:+.4f}, {s.ci_high:+.4f}], {s.documents} docs): "
        f"{'passes' if s.passed else 'fails'} ({'must improve by' if s.rule == 'improve' else 'may regress by'} "
        f"{abs(s.limit):.4f})" for s in slices)
    return GateDecision(
        promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=old_slice.candidate_bits_per_byte,
        production_bits_per_byte=old_slice.production_bits_per_byte, production_version=production_version,
        difference=old_slice.difference, ci_low=old_slice.ci_low, ci_high=old_slice.ci_high,
        threshold=old_slice.limit, documents=old_slice.documents, slices=slices,
        reason=f"{_name(candidate_version)} adapted from production v{production_version}: {words}",
    )


def _slice(name: str, split: str, rule: str, candidate: DocScores, production: DocScores, limit: float,
           cfg: GateConfig) -> GateSlice:
    diff, low, high = paired_interval(candidate, production, cfg)
    return GateSlice(name=name, split=split, rule=rule, documents=len(candidate.tokens),
                     candidate_bits_per_byte=bits_per_byte(candidate),
                     production_bits_per_byte=bits_per_byte(production),
                     difference=diff, ci_low=low, ci_high=high, limit=limit, passed=bool(high < limit))


def _name(candidate_version: Optional[int]) -> str:
    return "candidate" if candidate_version is None else f"candidate v{candidate_version}"
