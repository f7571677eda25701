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


def _prompts(rng: np.random.Generator, n: int, shape: TrafficShape) -> tuple[np.ndarray, np.ndarray]:
    """(word index of every word, words per prompt) of ``n`` prompts, drawn all at once."""
    n_words = np.maximum(1, rng.lognormal(np.log(shape.words_mean), 0.4, size=n).astype(np.int64))
    ranks = np.minimum(rng.zipf(1.3, size=int(n_words.sum())), 400) - 1  # a head of frequent words and a long tail
    return shape.vocab_offset + ranks, n_words


def synthetic_records(n: int, shape: TrafficShape = TrafficShape(), *, seed: int = 0,
                      start: Optional[datetime] = None, spacing_s: float = 1.0,
                      model: str = "llmops-lm") -> list[dict]:
    """``n`` traffic records of the contract format (docs/contracts.md), ``spacing_s`` seconds apart.

    Random values are drawn for all records at once (vectorised), so a million records take seconds.
    """
    rng = np.random.default_rng(seed)
    words = vocabulary(shape.vocab_offset + 400)
    word_ids = np.array(toy_tokenize([" ".join(words)])[0], dtype=np.int64)  # toy_tokenize is per word
    start = start or datetime(2026, 11, 23, 14, tzinfo=timezone.utc)
    index, n_words = _prompts(rng, n, shape)
    ends = np.cumsum(n_words)
    stopped = rng.random(n) < shape.length_stop_share
    completion_tokens = np.where(stopped, 16, rng.integers(1, 16, size=n))
    logprob, entropy = rng.normal(shape.logprob_mean, 0.3, size=n), rng.normal(2.3, 0.3, size=n)
    surprisal = rng.normal(shape.surprisal_mean, 0.4, size=n)
    latency = rng.lognormal(np.log(40.0), 0.2, size=n) * shape.latency_scale
    hexes = rng.bytes(12 * n).hex()
    word_list, id_list = index.tolist(), word_ids[index].tolist()
    records = []
    for i in range(n):
        a, b = int(ends[i] - n_words[i]), int(ends[i])
        prompt = " ".join(words[w] for w in word_list[a:b])
        finish = "length" if stopped[i] else "stop"
        records.append({
            "id": f"cmpl-{hexes[24 * i:24 * i + 24]}",
            "ts": (start + timedelta(seconds=i * spacing_s)).isoformat(),
            "model": model, "version": 1, "variant": "fp32", "prompt": prompt,
            "prompt_token_ids": id_list[a:b],
            "params": {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": None, "n": 1, "stop": None},
            "completions": [{"text": "...", "finish_reason": finish, "tokens": int(completion_tokens[i]),
                             "mean_logprob": float(logprob[i]), "mean_entropy": float(entropy[i])}],
            "features": {
                "prompt_chars": len(prompt), "prompt_tokens": b - a,
                "bytes_per_token": len(prompt.encode()) / (b - a),
                "prompt_surprisal": float(surprisal[i]),
                "completion_tokens": float(completion_tokens[i]), "completion_logprob": float(logprob[i]),
                "completion_entropy": float(entropy[i]), "stop_reason": finish,
                "latency_ms": float(latency[i]),
            },
            "x_request_id": None, "user": None,
        })
    return records
