"""Scoring and generation with transformers' ``generate``: surprisal of prompts, completions with log-probs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    do_sample: bool = True
    temperature: float = 1.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from the logit of every token generated so far
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence of a token generated so far
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    tokens: int  # generated tokens before the end (the eos itself not counted)
    mean_logprob: float  # mean log-prob (nats) of the generated tokens under the unprocessed model distribution
    mean_entropy: float  # mean entropy (nats) of that distribution at each generated position


@dataclass(frozen=True)
class PromptScore:
    ids: tuple[int, ...]  # token ids of the whole prompt (no special tokens)
    mean_nll: float  # nats per token over its last context-length tokens, the first scored after the eos marker

    @property
    def tokens(self) -> int:
        return len(self.ids)


def config_context_length(config: PretrainedConfig) -> Optional[int]:
    """The longest input a model config allows (Llama-style or GPT-2-style field), None if it says nothing."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def context_length(model: PreTrainedModel) -> int:
    return int(config_context_length(model.config) or 1024)


def marked_prompt(ids: Sequence[int], eos_token_id: int, budget: int) -> list[int]:
    """A prompt's token ids after the eos document marker, keeping the last ``budget`` tokens (at least one)."""
    marked = [eos_token_id, *ids]
    return marked[-budget:] if budget > 0 else marked[-1:]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, budget: int) -> list[int]:
    """Token ids of ``prompt`` after the eos document marker, keeping the last ``budget`` tokens."""
    return marked_prompt(tokenizer(prompt, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, budget)


@torch.no_grad()
def score_prompts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  batch_size: int = 16) -> list[PromptScore]:
    """Mean negative log-likelihood of each prompt (its last context-length tokens) under ``model``."""
    device = model.device
    ctx = context_length(model)
    full = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    encoded = [[tokenizer.eos_token_id, *ids][-ctx:] for ids in full]
    scores: list[PromptScore] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.eos_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # right padding: positions stay 0..len-1
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
        target = input_ids[:, 1:].to(device)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask[:, 1:].to(device)
        for row, ids in enumerate(batch):
            n = len(ids) - 1
            scores.append(PromptScore(ids=tuple(full[start + row]), mean_nll=float(nll[row].sum() / n) if n else 0.0))
    return scores


@torch.no_grad()
def complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             params: SamplingParams, n: int = 1) -> list[list[Completion]]:
    """``n`` completions for each prompt (left-padded batch), with per-token log-probs and entropies."""
    ctx = context_length(model)
    budget = max(1, ctx - params.max_new_tokens)
    encoded = [encode_prompt(tokenizer, p, budget) for p in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):  # left padding so every prompt ends where generation starts
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    if params.seed is not None:
        torch.manual_seed(params.seed)
    sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k) if params.do_sample else {}
    # transformers refuses num_return_sequences > 1 for greedy decoding; it is deterministic, so
    # decode once per prompt and repeat the result n times
    per_prompt = n if params.do_sample else 1
    out = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=mask.to(model.device),
        max_new_tokens=params.max_new_tokens,
        do_sample=params.do_sample,
        num_return_sequences=per_prompt,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([_StopOnText(tokenizer, params.stop, width)]) if params.stop else None,
        logits_processor=LogitsProcessorList([_OpenAIPenalties(params, width)]) if params.penalised else None,
        return_dict_in_generate=True,
        output_logits=True,
        **sampling,
    )
    generated = out.sequences[:, width:]  # (B*per_prompt, new)
    logits = torch.stack(out.logits, dim=1).float()  # (B*per_prompt, new, V), before any sampling processor
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, generated.unsqueeze(-1)).squeeze(-1)  # (B*per_prompt, new)
    entropy = -(logp.exp() * logp).sum(-1)
    results: list[list[Completion]] = []
    for i in range(len(prompts)):
        choices = [_completion(tokenizer, generated[j], chosen[j], entropy[j], params)
                   for j in range(i * per_prompt, (i + 1) * per_prompt)]
        results.append(choices if per_prompt == n else choices * n)
    return results


class _OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far (the prompt excluded), and its
    logit_bias. transformers ships only the multiplicative ``repetition_penalty``, which counts the prompt too.

    Runs after transformers' own processors (for sampling, after temperature and top-k/top-p), so a bias cannot
    bring back a token they filtered out; greedy decoding sees the exact OpenAI arithmetic.
    """

    def __init__(self, params: SamplingParams, prompt_width: int):
        self.presence, self.frequency, self.width = params.presence_penalty, params.frequency_penalty, prompt_width
        self.bias = dict(params.logit_bias)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.width:]
        if generated.shape[1] and (self.presence or self.frequency):
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        if self.bias:
            ids = torch.tensor(list(self.bias), device=scores.device)
            scores = scores.clone()
            scores[:, ids] += torch.tensor(list(self.bias.values()), device=scores.device, dtype=scores.dtype)
        return scores


class _StopOnText(StoppingCriteria):
    """Stop a row once its generated text, the prompt excluded, contains a stop string.

    transformers' ``stop_strings`` match the whole sequence, so a stop string straddling the end of
    the prompt halted generation while the completion held nothing to cut (finish_reason "length").
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, tuple(stops), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def _completion(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, chosen: torch.Tensor,
                entropy: torch.Tensor, params: SamplingParams) -> Completion:
    eos = tokenizer.eos_token_id
    ids_list = ids.tolist()
    length = ids_list.index(eos) if eos in ids_list else len(ids_list)
    finish = "stop" if length < len(ids_list) else "length"
    text = tokenizer.decode(ids_list[:length], skip_special_tokens=True)
    for stop in params.stop:
        cut = text.find(stop)
        if cut != -1:
            text, finish = text[:cut], "stop"
    # log-prob and entropy also cover the position that produced the eos, when there was one
    scored = max(1, min(len(ids_list), length + 1))
    return Completion(
        text=text,
        finish_reason=finish,
        tokens=length,
        mean_logprob=float(chosen[:scored].mean()),
        mean_entropy=float(entropy[:scored].mean()),
    )
