"""What a variant is measured by beside its parent: decode speed, prefill time, and how close its next-token
distributions stay (mean KL, top-1 agreement)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.models.model.generation import context_length
from llmops.models.training.preflight import measure_step_seconds


def _prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch: int, prompt_tokens: int) -> torch.Tensor:
    """``batch`` prompts of exactly ``prompt_tokens`` tokens (texts cycled and repeated until long enough)."""
    ids = [t for t in tokenizer(list(texts), add_special_tokens=False)["input_ids"] if t] or [[tokenizer.eos_token_id]]
    rows = []
    for i in range(batch):
        row = list(ids[i % len(ids)])
        while len(row) < prompt_tokens:
            row += row
        rows.append(row[:prompt_tokens])
    return torch.tensor(rows)


@torch.inference_mode()
def decode_tokens_per_s(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                        batch: int, new_tokens: int, runs: int, prompt_tokens: int = 16) -> float:
    """Greedy decode speed: new tokens per second over the whole batch, median of ``runs`` after a warm-up run.

    Every run generates exactly ``new_tokens`` per row (eos is not allowed to stop it early), so variants are
    timed on the same work. The prefill of the short prompt is included, as a client sees it.
    """
    x = _prompts(tokenizer, texts, batch, min(prompt_tokens, context_length(model) - new_tokens)).to(model.device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.eos_token_id, attention_mask=torch.ones_like(x))
    return batch * new_tokens / measure_step_seconds(lambda: model.generate(x, **kwargs), model.device, runs)


@torch.inference_mode()
def prefill_ms(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], tokens: int,
               runs: int) -> float:
    """Median milliseconds of one forward pass over a ``tokens``-token prompt at batch 1."""
    x = _prompts(tokenizer, texts, 1, min(tokens, context_length(model))).to(model.device)
    return measure_step_seconds(lambda: model(input_ids=x), model.device, runs) * 1000


@torch.inference_mode()
def distribution_parity(parent: PreTrainedModel, variant: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        texts: Sequence[str], max_tokens: int = 20_000) -> tuple[float, float]:
    """(mean per-token KL(parent || variant) in nats, share of positions whose top-1 next token agrees).

    Each text is scored from an eos marker, cut to the context, one document at a time (no padding to get
    wrong), until ``max_tokens`` positions are counted.
    """
    ctx = min(context_length(parent), context_length(variant))
    kl_sum, agree, count = 0.0, 0, 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        x = torch.tensor([[tokenizer.eos_token_id, *ids][:ctx]])
        p = torch.log_softmax(parent(input_ids=x.to(parent.device)).logits.float().cpu()[0], -1)
        q = torch.log_softmax(variant(input_ids=x.to(variant.device)).logits.float().cpu()[0], -1)
        vocab = min(p.shape[-1], q.shape[-1])
        p, q = p[:, :vocab], q[:, :vocab]
        kl_sum += float((p.exp() * (p - q)).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        count += p.shape[0]
        if count >= max_tokens:
            break
    if not count:
        raise ValueError("distribution_parity needs at least one text")
    return kl_sum / count, agree / count
