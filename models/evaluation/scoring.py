"""Scoring: sliding-window negative log-likelihood per document, and the perplexity and bits per byte it gives."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.models.model.generation import context_length
from llmops.models.model.kernels import linear_kernels, use_onednn
from llmops.models.records import DocScores, SplitEval

LN2 = math.log(2)


def _windows(seq: list[int], ctx: int, stride: int) -> list[tuple[list[int], int]]:
    """(window, number of targets scored at its end) covering every target of ``seq[1:]`` once.

    Each window after the first overlaps the previous by at least ``ctx - stride`` tokens, so every
    scored token sees at least that much context (the sliding-window evaluation of the
    transformers perplexity guide). Unlike the guide's, the last window also spans a full context
    (when ``seq`` has one), rather than starting ``stride`` after the previous and scoring its
    targets with less context than the model could use.
    """
    out, prev_end, begin = [], 1, 0
    while True:
        end = min(begin + ctx, len(seq))
        out.append((seq[max(0, end - ctx):end], end - prev_end))
        if end == len(seq):
            return out
        prev_end, begin = end, begin + stride


@torch.no_grad()
def score_documents(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                    stride: Optional[int] = None, batch_size: int = 16) -> DocScores:
    """Summed NLL (nats), token count and byte count of every document, scored after an eos marker."""
    ctx = context_length(model)
    stride = min(stride or max(1, ctx // 2), ctx - 1)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    jobs = []  # (doc index, window, targets)
    for doc, toks in enumerate(ids):
        for window, targets in _windows([tokenizer.eos_token_id, *toks], ctx, stride):
            jobs.append((doc, window, targets))
    jobs.sort(key=lambda j: len(j[1]))  # similar lengths together: less padding
    nll = np.zeros(len(ids))
    device = model.device
    # scoring is batched matmuls, where oneDNN beats MKL on the CPUs llmops.models.model.kernels picks it for
    onednn = use_onednn("auto", device, "fp32" if model.dtype == torch.float32 else str(model.dtype))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        width = max(len(w) for _, w, _ in batch)
        x = torch.full((len(batch), width), tokenizer.eos_token_id, dtype=torch.long)
        scored = torch.zeros((len(batch), width - 1), dtype=torch.bool)
        for row, (_, window, targets) in enumerate(batch):
            x[row, :len(window)] = torch.tensor(window)
            scored[row, len(window) - 1 - targets:len(window) - 1] = True
        mask = (torch.arange(width)[None, :] < torch.tensor([len(w) for _, w, _ in batch])[:, None]).long()
        with linear_kernels(onednn):
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.float()
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), x[:, 1:].to(device), reduction="none"
        )  # (B, T-1)
        per_row = (token_nll * scored.to(device)).sum(-1).cpu().numpy()
        for row, (doc, _, _) in enumerate(batch):
            nll[doc] += per_row[row]
    return DocScores(
        nll_nats=nll.tolist(),
        tokens=[len(t) for t in ids],
        bytes=[len(t.encode("utf-8")) for t in texts],
    )


def summarize(split: str, scores: DocScores) -> SplitEval:
    total_nll, tokens, nbytes = sum(scores.nll_nats), sum(scores.tokens), sum(scores.bytes)
    loss = total_nll / max(1, tokens)
    return SplitEval(
        split=split, documents=len(scores.tokens), tokens=tokens, bytes=nbytes,
        loss=loss, perplexity=math.exp(min(loss, 50.0)), bits_per_byte=total_nll / LN2 / max(1, nbytes),
    )


def bits_per_byte(scores: DocScores) -> float:
    return sum(scores.nll_nats) / LN2 / max(1, sum(scores.bytes))


