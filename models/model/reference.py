"""Reference traffic: held-out documents run through the served model's own scoring and generation code."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.models.model.generation import SamplingParams, complete, score_prompts
from llmops.models.model.traffic import traffic_record


def reference_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                      params: SamplingParams, model_name: str, version: int, variant: str = "fp32",
                      batch_size: int = 16, latency_samples: int = 64) -> list[dict]:
    """Traffic records for ``prompts`` as the server would capture them: each a validated
    :class:`~llmops.infra.traffic.record.TrafficRecord`, as the dict it writes to the log (what
    profiles, drift checks and the log's readers take).

    The first ``latency_samples`` prompts are generated one at a time and timed exactly as the
    server times a request (generation only, batch of one); the rest are generated in batches
    for speed and carry no latency (a missing value, left out of the latency signal). A batch's
    wall time divided by its size is not a request latency and would make the reference useless.
    """
    records: list[dict] = []
    timed = min(latency_samples, len(prompts))
    for prompt in prompts[:timed]:
        records += _records([prompt], model, tokenizer, params, model_name, version, variant, timed=True)
    for start in range(timed, len(prompts), batch_size):
        records += _records(list(prompts[start:start + batch_size]), model, tokenizer, params, model_name,
                            version, variant, timed=False)
    return records


def _records(batch: list[str], model, tokenizer, params, model_name, version, variant, *, timed: bool) -> list[dict]:
    t0 = time.perf_counter()
    outputs = complete(model, tokenizer, batch, params)
    latency: Optional[float] = (time.perf_counter() - t0) * 1000 if timed else None
    scores = score_prompts(model, tokenizer, batch, len(batch))
    return [traffic_record(prompt=p, score=s, completions=o, params=params, n=1, latency_ms=latency,
                           model=model_name, version=version, variant=variant).model_dump()
            for p, s, o in zip(batch, scores, outputs)]
