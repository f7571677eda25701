"""One decoding step for a batch of unrelated sequences, each with its own sampling settings and random stream.

``generate`` applies one set of logits processors and one global random stream to a whole batch; the serving
engine batches requests that asked for different temperatures, penalties and seeds, and a seeded request must
draw the same tokens whatever shares its batch. Rows with equal warper settings are processed together with
transformers' own warpers (so the arithmetic is ``generate``'s); the penalties that differ per row are applied per
row; each seeded row samples from its own ``torch.Generator``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llmops.models.model.generation import SamplingParams


def row_generator(seed: Optional[int], choice: int, device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    """The random stream of choice ``choice`` of a request seeded with ``seed`` (None: the engine's shared stream).

    Choice j of a request draws from its own stream, so a seeded request with ``n=2`` gives two different
    completions, each the same on every run and in every batch.
    """
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + choice) % (1 << 63))
    return gen


@dataclass
class RowState:
    """What the step needs of one sequence: its settings, stream, and the ids it has seen and generated."""

    params: SamplingParams
    generator: Optional[torch.Generator]
    prompt_ids: Sequence[int]
    generated: list[int]


@dataclass(frozen=True)
class StepOutput:
    tokens: list[int]
    logprobs: list[float]  # of the chosen token under the unprocessed model distribution (nats)
    entropies: list[float]  # of that distribution
    top: list[Optional[list[tuple[int, float]]]]  # the top-N alternatives, for rows that asked (N = top_n[i])


def _warpers(params: SamplingParams) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


def _repetition_penalty(scores: torch.Tensor, row: RowState) -> None:
    """transformers' multiplicative penalty (prompt and generated ids alike), in place on one row."""
    seen = torch.tensor(sorted({*row.prompt_ids, *row.generated}), dtype=torch.long, device=scores.device)
    picked = scores[seen]
    penalty = row.params.repetition_penalty
    scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)


def _openai_penalties(scores: torch.Tensor, row: RowState) -> None:
    """OpenAI's presence/frequency penalties over the generated ids and its logit_bias, in place on one row."""
    params = row.params
    if row.generated and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(row.generated, device=scores.device).unique(return_counts=True)
        scores[ids] -= params.frequency_penalty * counts.to(scores.dtype) + params.presence_penalty
    for token, bias in params.logit_bias:
        scores[token] += bias


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One draw per row from ``probs`` given a uniform draw per row: the first token whose cumulative probability
    exceeds it. ``torch.multinomial`` took a third of a decode step at 64 rows x 4096 tokens on CPU; this is a
    cumsum and a search. The draw is scaled by the row's total, so rounding can never pick a zero-probability token.
    """
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1)


def step(logits: torch.Tensor, rows: Sequence[RowState], top_n: Sequence[int],
         shared: Optional[torch.Generator] = None) -> StepOutput:
    """Choose the next token of every row from its last-position ``logits`` (rows x vocab).

    Order per row, as in ``complete``: repetition penalty, then (sampling) temperature, top-k, top-p, then OpenAI's
    penalties and bias; greedy rows take the argmax. Unseeded rows share ``shared`` (the default stream if None).
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    scores = logits.clone()
    for i, row in enumerate(rows):
        if row.params.repetition_penalty != 1.0:
            _repetition_penalty(scores[i], row)
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        p = row.params
        groups.setdefault((p.do_sample, p.temperature, p.top_k, p.top_p), []).append(i)
    chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    for (do_sample, *_), members in groups.items():
        index = torch.tensor(members, device=logits.device)
        sub = scores[index]
        if do_sample:
            sub = _warpers(rows[members[0]].params)(None, sub)
        for j, i in enumerate(members):
            if rows[i].params.penalised:
                _openai_penalties(sub[j], rows[i])
        if not do_sample:
            chosen[index] = sub.argmax(-1)
            continue
        probs = torch.softmax(sub, dim=-1)
        uniform = torch.empty(len(members), 1, device=logits.device)
        shared_rows = [j for j, i in enumerate(members) if rows[i].generator is None]
        if shared_rows:
            uniform[shared_rows] = torch.rand(len(shared_rows), 1, generator=shared, device=logits.device)
        for j, i in enumerate(members):
            if rows[i].generator is not None:
                uniform[j] = torch.rand(1, generator=rows[i].generator, device=logits.device)
        chosen[index] = _inverse_cdf(probs, uniform)
    chosen_logp = logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    top: list[Optional[list[tuple[int, float]]]] = [None] * len(rows)
    wanted = max(top_n, default=0)
    if wanted:
        values, ids = logp.topk(min(wanted, logp.shape[-1]), dim=-1)
        for i, n in enumerate(top_n):
            if n:
                top[i] = list(zip(ids[i, :n].tolist(), values[i, :n].tolist()))
    return StepOutput(chosen.tolist(), chosen_logp.tolist(), entropy.tolist(), top)


def prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, top_n: int = 0
                    ) -> tuple[list[float], list[Optional[list[tuple[int, float]]]]]:
    """Log-prob of each prompt token given those before it (``logits``: positions x vocab of the prefill, ``ids``
    the prompt's ids, the document marker first); the marker itself has none and is left out."""
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    chosen = logp.gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1).tolist()
    if not top_n:
        return chosen, [None] * len(chosen)
    values, top_ids = logp.topk(min(top_n, logp.shape[-1]), dim=-1)
    return chosen, [list(zip(a, b)) for a, b in zip(top_ids.tolist(), values.tolist())]
