"""Traffic records: one request's prompt, completions and measured features, as a typed contract record."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from statistics import fmean
from typing import Optional

from llmops.infra.traffic.record import TrafficCompletion, TrafficFeatures, TrafficParams, TrafficRecord
from llmops.models.model.generation import Completion, PromptScore, SamplingParams


def traffic_record(*, prompt: str, score: PromptScore, completions: list[Completion], params: SamplingParams,
                   n: int, latency_ms: Optional[float], model: str, version: int, variant: str,
                   request_id: Optional[str] = None, ts: Optional[datetime] = None,
                   x_request_id: Optional[str] = None, user: Optional[str] = None) -> TrafficRecord:
    """The record the server captures and the reference profile is built from (docs/contracts.md).

    Raises:
        pydantic.ValidationError: A value outside the contract (e.g. no completion, a naive ``ts``).
    """
    nbytes = len(prompt.encode("utf-8"))
    return TrafficRecord(
        id=request_id or f"cmpl-{uuid.uuid4().hex}",
        ts=ts or datetime.now(timezone.utc),
        model=model,
        version=version,
        variant=variant,
        prompt=prompt,
        prompt_token_ids=list(score.ids),
        params=TrafficParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature if params.do_sample else 0.0,
            top_p=params.top_p, top_k=params.top_k, n=n, stop=list(params.stop) or None,
        ),
        completions=[
            TrafficCompletion(text=c.text, finish_reason=c.finish_reason, tokens=c.tokens,
                              mean_logprob=c.mean_logprob, mean_entropy=c.mean_entropy)
            for c in completions
        ],
        features=TrafficFeatures(
            prompt_chars=len(prompt),
            prompt_tokens=score.tokens,
            bytes_per_token=nbytes / max(1, score.tokens),
            prompt_surprisal=score.mean_nll,
            completion_tokens=fmean(c.tokens for c in completions),
            completion_logprob=fmean(c.mean_logprob for c in completions),
            completion_entropy=fmean(c.mean_entropy for c in completions),
            stop_reason=completions[0].finish_reason,
            latency_ms=latency_ms,
        ),
        x_request_id=x_request_id,
        user=user,
    )
