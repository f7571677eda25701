"""The adaptation gate: better on held-out traffic, no worse (within a share) on production's test split, each judged
by a paired bootstrap over hand-made per-document scores."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llmops.infra.config import AdaptConfig, GateConfig
from llmops.models.evaluation.gate import adaptation_gate, paired_interval
from llmops.models.evaluation.scoring import bits_per_byte
from llmops.models.records import DocScores

BYTES = 200


def production_scores(n: int, seed: int, bpb: float = 1.5) -> DocScores:
    """``n`` documents of ``BYTES`` bytes around ``bpb`` bits/byte, each different."""
    per_doc = np.random.default_rng(seed).normal(bpb, 0.2, size=n).clip(0.5)
    return DocScores(nll_nats=[float(b * BYTES * math.log(2)) for b in per_doc], tokens=[50] * n, bytes=[BYTES] * n)


def scaled(scores: DocScores, factor: float, noise: float = 0.0, seed: int = 1) -> DocScores:
    """The same documents with every NLL times ``factor`` (plus a small relative noise per document)."""
    jitter = np.random.default_rng(seed).normal(0, noise, size=len(scores.nll_nats)) if noise else np.zeros(
        len(scores.nll_nats))
    return scores.model_copy(update={"nll_nats": [float(v * (factor + j)) for v, j in zip(scores.nll_nats, jitter)]})


NEW_PROD = production_scores(40, seed=0, bpb=2.2)  # production on the drifted traffic: worse than on its own data
OLD_PROD = production_scores(60, seed=1, bpb=1.5)


def decide(new_candidate: DocScores, old_candidate: DocScores, new_production: DocScores = NEW_PROD,
           old_production: DocScores = OLD_PROD, **adapt):
    return adaptation_gate((new_candidate, new_production), (old_candidate, old_production), GateConfig(),
                           AdaptConfig(**adapt), production_version=3, candidate_version=4)


def reason_part(decision, name: str) -> str:
    """The sentence of ``decision.reason`` about the slice called ``name``."""
    (part,) = [p for p in decision.reason.split("; ") if name in p]
    return part


def test_better_on_the_new_slice_and_equal_on_the_old_promotes():
    decision = decide(scaled(NEW_PROD, 0.8, noise=0.02), OLD_PROD)
    assert decision.promote
    new, old = decision.slices
    assert (new.name, new.split, new.rule) == ("held-out traffic", "validation", "improve")
    assert (old.name, old.split, old.rule) == ("production test split", "test", "no_regression")
    assert new.passed and old.passed
    assert new.documents == 40 and old.documents == 60
    assert new.difference == pytest.approx(-0.2 * bits_per_byte(NEW_PROD), rel=0.05)
    assert new.ci_high < 0
    assert old.difference == old.ci_low == old.ci_high == 0.0
    assert new.limit == 0.0  # -adapt.min_improvement
    assert old.limit == pytest.approx(0.01 * bits_per_byte(OLD_PROD))
    assert decision.reason.startswith("candidate v4 adapted from production v3: ")
    assert "passes" in reason_part(decision, "held-out traffic")
    assert "passes" in reason_part(decision, "production test split")


def test_the_top_level_numbers_are_the_old_slices():
    decision = decide(scaled(NEW_PROD, 0.8, noise=0.02), scaled(OLD_PROD, 1.002, noise=0.01))
    old = decision.slices[1]
    assert (decision.candidate_bits_per_byte, decision.production_bits_per_byte) == (
        old.candidate_bits_per_byte, old.production_bits_per_byte)
    assert (decision.difference, decision.ci_low, decision.ci_high) == (old.difference, old.ci_low, old.ci_high)
    assert decision.threshold == old.limit
    assert decision.documents == old.documents == 60
    assert decision.production_version == 3 and decision.candidate_version == 4
    assert decision.production_bits_per_byte == pytest.approx(bits_per_byte(OLD_PROD))


def test_a_regression_beyond_max_regression_on_the_old_slice_is_rejected_and_named():
    decision = decide(scaled(NEW_PROD, 0.8, noise=0.02), scaled(OLD_PROD, 1.03))  # 3% worse, 1% allowed
    assert not decision.promote
    new, old = decision.slices
    assert new.passed and not old.passed
    assert old.ci_high >= old.limit == pytest.approx(0.01 * bits_per_byte(OLD_PROD))
    assert "fails" in reason_part(decision, "production test split")
    assert "passes" in reason_part(decision, "held-out traffic")


def test_a_regression_within_max_regression_passes_and_the_share_is_configurable():
    candidate_new, candidate_old = scaled(NEW_PROD, 0.8, noise=0.02), scaled(OLD_PROD, 1.005)  # 0.5% worse
    assert decide(candidate_new, candidate_old).promote
    strict = decide(candidate_new, candidate_old, max_regression=0.001)
    assert not strict.promote and not strict.slices[1].passed
    assert "fails" in reason_part(strict, "production test split")


@pytest.mark.parametrize("factor, noise", [(1.0, 0.0), (1.0, 0.05), (1.02, 0.0)])
def test_a_candidate_not_better_on_the_new_slice_is_rejected(factor, noise):
    decision = decide(scaled(NEW_PROD, factor, noise=noise), OLD_PROD)
    assert not decision.promote
    new, old = decision.slices
    assert not new.passed and old.passed
    assert "fails" in reason_part(decision, "held-out traffic")


def test_the_new_slice_must_improve_by_min_improvement():
    candidate = scaled(NEW_PROD, 0.95, noise=0.01)  # about 0.11 bits/byte better
    assert decide(candidate, OLD_PROD).promote
    demanding = decide(candidate, OLD_PROD, min_improvement=0.5)
    assert not demanding.promote
    assert demanding.slices[0].limit == -0.5 and not demanding.slices[0].passed


@pytest.mark.parametrize("which", ["new", "old"])
def test_slices_with_mismatched_document_counts_raise(which):
    short_new = DocScores(nll_nats=NEW_PROD.nll_nats[:-1], tokens=NEW_PROD.tokens[:-1], bytes=NEW_PROD.bytes[:-1])
    short_old = DocScores(nll_nats=OLD_PROD.nll_nats[:-1], tokens=OLD_PROD.tokens[:-1], bytes=OLD_PROD.bytes[:-1])
    with pytest.raises(ValueError, match="same documents"):
        if which == "new":
            decide(short_new, OLD_PROD)
        else:
            decide(NEW_PROD, short_old)


def test_paired_interval_is_the_bits_per_byte_difference_with_a_ci_around_it():
    candidate = scaled(NEW_PROD, 0.9, noise=0.03)
    diff, low, high = paired_interval(candidate, NEW_PROD, GateConfig())
    assert diff == pytest.approx(bits_per_byte(candidate) - bits_per_byte(NEW_PROD))
    assert low < diff < high < 0
    wider = paired_interval(candidate, NEW_PROD, GateConfig(confidence=0.99))
    assert wider[1] < low and wider[2] > high
    assert paired_interval(candidate, NEW_PROD, GateConfig()) == (diff, low, high)  # seeded: reproducible
    assert paired_interval(NEW_PROD, NEW_PROD, GateConfig()) == (0.0, 0.0, 0.0)
