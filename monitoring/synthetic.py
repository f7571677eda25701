"""Synthetic traffic in the contract format, with knobs that drift it: for tests, benchmarks and demos."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

import numpy as np

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "ba", "do"]


def vocabulary(size: int = 600) -> list[str]:
    """Deterministic pseudo-words built from syllables (no corpus needed)."""
    words: dict[str, None] = {}  # ordered set: the same index always gives the same word
    i = 0
    while len(words) < size:
        n, word = i, ""
        for _ in range(2 + i % 3):
            word += _SYLLABLES[n % len(_SYLLABLES)]
            n //= len(_SYLLABLES)
        words.setdefault(word)
        i += 1
    return list(words)


def toy_tokenize(prompts: list[str]) -> list[list[int]]:
    """A stand-in tokenizer: one id per whitespace-separated word, by a stable hash."""
    return [[zlib.crc32(w.encode()) % 50_000 for w in p.split()] for p in prompts]


@dataclass(frozen=True)
class TrafficShape:
    """Parameters of the synthetic traffic; the defaults are the 'reference' population.

    Attributes:
        words_mean: Mean prompt length in words (log-normal).
        vocab_offset: Index of the first word used: shifting it changes which tokens appear.
        surprisal_mean: Mean of prompt_surprisal (nats/token).
        logprob_mean: Mean of completion_logprob.
        length_stop_share: Share of completions stopped by max_tokens.
        latency_scale: Multiplier of latency_ms.
    """

    words_mean: float = 20.0
    vocab_offset: int = 0
    surprisal_mean: float = 3.2
    logprob_mean: float = -2.1
    length_stop_share: float = 0.7
    latency_scale: float = 1.0


def _prompt(rng: np.random.Generator, words: list[str], shape: TrafficShape) -> str:
    n_words = max(1, int(rng.lognormal(np.log(shape.words_mean), 0.4)))
    ranks = np.minimum(rng.zipf(1.3, size=n_words), 400) - 1  # a head of frequent words and a long tail
    return " ".join(words[shape.vocab_offset + r] for r in ranks)


def synthetic_records(n: int, shape: TrafficShape = TrafficShape(), *, seed: int = 0,
                      start: Optional[datetime] = None, spacing_s: float = 1.0,
                      model: str = "llmops-lm") -> list[dict]:
    """``n`` traffic records of the contract format (docs/contracts.md), ``spacing_s`` seconds apart."""
    rng = np.random.default_rng(seed)
    words = vocabulary(shape.vocab_offset + 400)
    start = start or datetime(2026, 11, 23, 14, tzinfo=timezone.utc)
    records = []
    for i in range(n):
        prompt = _prompt(rng, words, shape)
        tokens = len(toy_tokenize([prompt])[0])
        stopped_by_length = rng.random() < shape.length_stop_share
        completion_tokens = 16 if stopped_by_length else int(rng.integers(1, 16))
        logprob, entropy = float(rng.normal(shape.logprob_mean, 0.3)), float(rng.normal(2.3, 0.3))
        finish = "length" if stopped_by_length else "stop"
        records.append({
            "id": f"cmpl-{rng.bytes(12).hex()}",
            "ts": (start + timedelta(seconds=i * spacing_s)).isoformat(),
            "model": model, "version": 1, "variant": "fp32", "prompt": prompt,
            "params": {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": None, "n": 1, "stop": None},
            "completions": [{"text": "...", "finish_reason": finish, "tokens": completion_tokens,
                             "mean_logprob": logprob, "mean_entropy": entropy}],
            "features": {
                "prompt_chars": len(prompt), "prompt_tokens": tokens,
                "bytes_per_token": len(prompt.encode()) / tokens,
                "prompt_surprisal": float(rng.normal(shape.surprisal_mean, 0.4)),
                "completion_tokens": float(completion_tokens), "completion_logprob": logprob,
                "completion_entropy": entropy, "stop_reason": finish,
                "latency_ms": float(rng.lognormal(np.log(40.0), 0.2) * shape.latency_scale),
            },
        })
    return records
