"""The champion/challenger gate: a paired bootstrap over documents of candidate minus production bits per byte."""
from __future__ import annotations

from typing import Optional

import numpy as np

from llmops.infra.config import GateConfig
from llmops.models.evaluation.scoring import LN2, bits_per_byte
from llmops.models.records import DocScores, GateDecision


def gate(candidate: DocScores, production: Optional[DocScores], cfg: GateConfig,
         production_version: Optional[int] = None, candidate_version: Optional[int] = None) -> GateDecision:
    """Promote a candidate that beats production by ``min_improvement`` bits/byte with confidence.

    Both models are scored on the same documents; a paired bootstrap over documents gives the
    interval of (candidate - production) bits per byte. With no production model the candidate
    must score at most ``max_bits_per_byte``.
    """
    cand_bpb = bits_per_byte(candidate)
    docs = len(candidate.tokens)
    name = "candidate" if candidate_version is None else f"candidate v{candidate_version}"
    if production is None:
        ok = cand_bpb <= cfg.max_bits_per_byte
        return GateDecision(
            promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
            threshold=cfg.max_bits_per_byte, documents=docs,
            reason=(f"no production model; {name} {cand_bpb:.4f} bits/byte "
                    f"{'meets' if ok else 'misses'} the bound {cfg.max_bits_per_byte}"),
        )
    if len(production.tokens) != docs:
        raise ValueError(f"gate needs both models scored on the same documents ({docs} vs {len(production.tokens)})")
    c, p, b = (np.asarray(v, dtype=float) for v in (candidate.nll_nats, production.nll_nats, candidate.bytes))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, docs, size=(cfg.bootstrap_samples, docs))
    diffs = ((c[idx] - p[idx]).sum(1)) / LN2 / b[idx].sum(1)
    tail = (1 - cfg.confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    prod_bpb = bits_per_byte(production)
    diff = cand_bpb - prod_bpb
    ok = bool(high < -cfg.min_improvement)
    verdict = "beats" if ok else "does not beat"
    return GateDecision(
        promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
        production_bits_per_byte=prod_bpb, production_version=production_version, difference=diff,
        ci_low=float(low), ci_high=float(high),
        threshold=-cfg.min_improvement, documents=docs,
        reason=(f"{name} {cand_bpb:.4f} vs production v{production_version} {prod_bpb:.4f} bits/byte: "
                f"difference {diff:+.4f}, {cfg.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]; "
                f"{verdict} production by the required {cfg.min_improvement} bits/byte"),
    )
