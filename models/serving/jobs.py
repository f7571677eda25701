"""One sequence to generate (one prompt, one choice) as the scheduler sees it, and what it produced.

The engine thread writes a job; the event loop reads it after ``notify``. The fields a reader looks at are
replaced whole (``text``) or set last (``done``), so a reader that sees ``done`` sees the final text.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import fmean
from typing import Optional, Union

import torch

from llmops.models.model.decoding import row_generator
from llmops.models.model.generation import Completion, PromptScore, SamplingParams, marked_prompt
from llmops.models.release.registry import LoadedModel
from llmops.models.serving.api import ApiError


class RequestTimeout(RuntimeError):
    """The request ran past ``serve.request_timeout_s``."""


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` a stream must hold back: a partly decoded character, or the start
    of a stop string that the next tokens may complete."""
    held = len(text) - len(text.rstrip("\ufffd"))
    body = text[:len(text) - held]
    for stop in stops:
        for k in range(min(len(stop) - 1, len(body)), 0, -1):
            if body.endswith(stop[:k]):
                held = max(held, len(text) - len(body) + k)
                break
    return held


@dataclass(eq=False)
class Job:
    index: int  # the choice index in the response
    prompt: Union[str, list[int]]
    params: SamplingParams
    notify: Callable[[Job], None]
    deadline: float  # time.monotonic() after which the job fails with RequestTimeout
    choice: int = 0  # which choice of its prompt: picks the random stream of a seeded request
    copies: int = 1  # greedy n > 1: the response repeats this job's completion
    detail: bool = False  # the response shows every token with its log-prob (OpenAI's ``logprobs``)
    top_logprobs: int = 0  # ... and its top-N alternatives
    echo: bool = False
    score: bool = False  # the capture wants the prompt's surprisal
    stream: bool = False
    pinned_version: Optional[int] = None
    cancelled: bool = False  # set by the request's side (the client went away)

    # set when the scheduler starts the job
    input_ids: list[int] = field(default_factory=list)  # document marker + prompt, cut to the context
    prompt_ids: list[int] = field(default_factory=list)  # the whole prompt
    generator: Optional[torch.Generator] = None
    version: Optional[int] = None
    variant: Optional[str] = None
    tokenizer: object = None
    eos: Optional[int] = None
    # written while generating
    tokens: list[int] = field(default_factory=list)  # generated ids, the eos excluded
    logprobs: list[float] = field(default_factory=list)  # per generated position, the eos position included
    entropies: list[float] = field(default_factory=list)
    top: list = field(default_factory=list)
    prompt_lp: Optional[list[float]] = None  # per prompt token after the marker
    prompt_top: Optional[list] = None
    first_token_at: Optional[float] = None
    text: str = ""  # while streaming: the text safe to send; once done: the completion
    prompt_text: str = ""  # once done: the prompt as text (token-id prompts decoded)
    pieces: list = field(default_factory=list)  # once done, with ``detail``: (text, logprob, {text: logprob}) per
    # token, the prompt's first with ``echo`` (the first prompt token's log-prob is given the document marker)
    finish_reason: Optional[str] = None
    error: Optional[BaseException] = None
    done: bool = False

    @property
    def estimated_tokens(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, list) else len(self.prompt) // 3 + 1

    @property
    def wants_prompt_logprobs(self) -> bool:
        return (self.echo and self.detail) or self.score

    def start(self, loaded: LoadedModel, ctx: int) -> None:
        """Tokenize and cut the prompt for ``loaded`` (the model this job will be answered by)."""
        if self.pinned_version is not None and self.pinned_version != loaded.version:
            raise ApiError(404, f"{loaded.name}:{self.pinned_version} is no longer served (now version "
                                f"{loaded.version})", param="model", code="model_not_found")
        tok = self.tokenizer = loaded.tokenizer
        self.eos = tok.eos_token_id
        self.version, self.variant = loaded.version, loaded.variant
        if isinstance(self.prompt, list):
            ids = list(self.prompt)
        else:
            ids = tok(self.prompt, add_special_tokens=False)["input_ids"]
        self.prompt_ids = ids
        budget = max(1, ctx - self.params.max_new_tokens)
        if self.echo and len(ids) + 1 > budget:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; with echo it must fit the {ctx}-token context "
                                f"with max_tokens={self.params.max_new_tokens} (at most {budget - 1} tokens)",
                           param="prompt")
        self.input_ids = marked_prompt(ids, self.eos, budget)
        self.generator = row_generator(self.params.seed, self.choice, loaded.model.device)

    @property
    def truncated(self) -> bool:
        return len(self.input_ids) < len(self.prompt_ids) + 1

    def prompt_scored(self, logprobs: list[float], top: list) -> None:
        self.prompt_lp, self.prompt_top = logprobs, top

    def accept(self, token: int, logprob: float, entropy: float, top) -> None:
        """Take the next sampled token; finish on eos, max_tokens or a stop string."""
        self.logprobs.append(logprob)
        self.entropies.append(entropy)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token == self.eos:
            return self.finish("stop")
        self.tokens.append(token)
        self.top.append(top)
        if len(self.tokens) >= self.params.max_new_tokens:
            return self.finish("length")
        if not (self.stream or self.params.stop):
            return None
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if any(s in text for s in self.params.stop):
            return self.finish("stop")
        self.text = text[:len(text) - _held_back(text, self.params.stop)]
        if self.stream:
            self.notify(self)
        return None

    def finish(self, reason: str) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.params.stop:
            cut = text.find(stop)
            if cut != -1:
                text, reason = text[:cut], "stop"
        self.text, self.finish_reason = text, reason
        tok = self.tokenizer
        self.prompt_text = self.prompt if isinstance(self.prompt, str) else tok.decode(self.prompt_ids)
        if self.detail:
            if self.echo:
                self.pieces = self._pieces(self.input_ids[1:], self.prompt_lp or [], self.prompt_top or [])
            self.pieces += self._pieces(self.tokens, self.logprobs, self.top)
        self._end()

    def _pieces(self, ids: list[int], logprobs: list[float], top: list) -> list:
        decode = self.tokenizer.decode
        return [(decode([t]), lp, {decode([a]): b for a, b in (alts or ())})
                for t, lp, alts in zip(ids, logprobs, top or [None] * len(ids))]

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self._end()

    def ended(self, now: float) -> bool:
        """Done, or ended now: cancelled by its client, or past its deadline (failed with RequestTimeout)."""
        if not self.done and self.cancelled:
            self.fail(RuntimeError("the client went away"))
        elif not self.done and now > self.deadline:
            self.fail(RequestTimeout("the request ran past its time limit (serve.request_timeout_s) after "
                                     f"{len(self.tokens)} generated tokens"))
        return self.done

    def _end(self) -> None:
        self.done = True
        self.notify(self)

    # -- results ------------------------------------------------------------------------------------
    def completion(self) -> Completion:
        return Completion(text=self.text, finish_reason=self.finish_reason or "length", tokens=len(self.tokens),
                          mean_logprob=fmean(self.logprobs) if self.logprobs else 0.0,
                          mean_entropy=fmean(self.entropies) if self.entropies else 0.0)

    def prompt_score(self) -> PromptScore:
        lp = self.prompt_lp or []
        return PromptScore(ids=tuple(self.prompt_ids), mean_nll=-fmean(lp) if lp else 0.0)


def make_jobs(prompts: list[Union[str, list[int]]], params: SamplingParams, n: int, *, timeout_s: float,
              notify: Callable[[Job], None], **options) -> list[Job]:
    """One job per (prompt, choice), ``options`` set on each (``detail``, ``top_logprobs``, ``echo``, ``score``,
    ``stream``, ``pinned_version``). Greedy choices are identical, so greedy decodes once per prompt and the response
    repeats it (``copies``)."""
    per_prompt = n if params.do_sample else 1
    deadline = time.monotonic() + timeout_s
    return [Job(index=i * per_prompt + c, prompt=prompt, params=params, notify=notify, deadline=deadline, choice=c,
                copies=n // per_prompt, **options)
            for i, prompt in enumerate(prompts) for c in range(per_prompt)]
