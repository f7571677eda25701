"""Reference traffic: held-out documents run through the served model's own scoring and generation code."""
from __future__ import annotations

import time
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.features import traffic_record
from models.generation import SamplingParams, complete, score_prompts


def reference_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                      params: SamplingParams, model_name: str, version: int, variant: str = "fp32",
                      batch_size: int = 16) -> list[dict]:
    """Traffic records for ``prompts`` as the server would capture them (latency per batch, per prompt)."""
    records = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        t0 = time.perf_counter()
        scores = score_prompts(model, tokenizer, batch, batch_size)
        outputs = complete(model, tokenizer, batch, params)
        latency_ms = (time.perf_counter() - t0) * 1000 / len(batch)
        records += [
            traffic_record(prompt=p, score=s, completions=o, params=params, n=1, latency_ms=latency_ms,
                           model=model_name, version=version, variant=variant)
            for p, s, o in zip(batch, scores, outputs)
        ]
    return records
