"""One decoding step over unrelated rows: the sampled distribution, filters, and seeded rows' own streams."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare

from llmops.models.model.decoding import RowState, row_generator, step
from llmops.models.model.generation import SamplingParams

PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4])


def _rows(n: int, params: SamplingParams, seed=None) -> list[RowState]:
    return [RowState(params, row_generator(seed, i) if seed is not None else None, [1], []) for i in range(n)]


def test_sampling_follows_the_model_distribution():
    n = 20_000
    logits = PROBS.log().expand(n, -1).clone()
    shared = torch.Generator().manual_seed(0)
    out = step(logits, _rows(n, SamplingParams(do_sample=True)), [0] * n, shared)
    counts = np.bincount(out.tokens, minlength=4)
    assert chisquare(counts, PROBS.numpy() * n).pvalue > 1e-3, counts
    assert np.allclose(out.logprobs, PROBS.log().numpy()[out.tokens], atol=1e-6)


def test_a_filtered_token_is_never_drawn():
    n = 5_000
    logits = PROBS.log().expand(n, -1).clone()
    out = step(logits, _rows(n, SamplingParams(do_sample=True, top_k=2)), [0] * n, torch.Generator().manual_seed(1))
    assert set(out.tokens) == {2, 3}


def test_a_seeded_row_draws_the_same_whatever_shares_the_step():
    params = SamplingParams(do_sample=True, seed=5)
    logits = torch.randn(1, 50)
    alone = step(logits, [RowState(params, row_generator(5, 0), [1], [])], [0]).tokens[0]
    others = torch.randn(9, 50)
    mixed_rows = _rows(9, SamplingParams(do_sample=True, temperature=0.7)) + [
        RowState(params, row_generator(5, 0), [1], [])]
    mixed = step(torch.cat([others, logits]), mixed_rows, [0] * 10, torch.Generator().manual_seed(2)).tokens[-1]
    assert mixed == alone
