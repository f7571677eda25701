"""Drift signals: the registry of what is measured on a traffic record, and extraction from records into arrays."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import numpy as np

Tokenize = Callable[[list[str]], list[list[int]]]
Kind = Literal["continuous", "categorical"]
OTHER = "__other__"  # the catch-all category; dunder so it cannot collide with a real stop reason


@dataclass(frozen=True)
class Signal:
    """One drift signal: a named quantity with a fixed kind, documented for the reports.

    Attributes:
        name: Key in the profile, drift.json and the reports.
        kind: ``continuous`` (binned on reference quantiles, KS test) or ``categorical`` (chi-square).
        catches: The drift this signal is meant to catch.
        computed: How the value is obtained from a record.
    """

    name: str
    kind: Kind
    catches: str
    computed: str


SIGNALS: dict[str, Signal] = {s.name: s for s in [
    Signal("prompt_chars", "continuous", "longer/shorter prompts (new use cases, pasted documents)",
           "features.prompt_chars, else len(prompt)"),
    Signal("prompt_tokens", "continuous", "prompt length in the model's own units; context-window pressure",
           "features.prompt_tokens (the server's tokenizer)"),
    Signal("bytes_per_token", "continuous", "text the tokenizer compresses badly: new languages, code, noise",
           "features.bytes_per_token (UTF-8 bytes / prompt tokens)"),
    Signal("prompt_surprisal", "continuous", "prompts unlike the training data (concept/domain shift)",
           "features.prompt_surprisal: mean NLL of the prompt under the served model, nats/token"),
    Signal("completion_tokens", "continuous", "changed generation length: max_tokens usage, earlier stops",
           "features.completion_tokens, else mean of completions[].tokens"),
    Signal("completion_logprob", "continuous", "the model is less sure of what it generates",
           "features.completion_logprob, else mean of completions[].mean_logprob"),
    Signal("completion_entropy", "continuous", "flatter/peakier next-token distributions while generating",
           "features.completion_entropy, else mean of completions[].mean_entropy"),
    Signal("latency_ms", "continuous", "serving slowdowns (hardware dependent: report-only by default)",
           "features.latency_ms"),
    Signal("stop_reason", "categorical", "completions cut by max_tokens instead of stopping, new stop reasons",
           "features.stop_reason, else completions[0].finish_reason"),
    Signal("token_frequency", "categorical", "vocabulary shift: different topics, languages, templates",
           "tokenize(prompt) per token occurrence, bucketed into the reference's top-K ids plus 'other'"),
]}


class RecordError(ValueError):
    """A traffic record that is malformed; the message names the record id and the field."""


class Extraction(dict):
    """``{signal: np.ndarray}`` for the signals that have values, plus why others have none.

    Attributes:
        n_records: Records the values were extracted from.
        missing: Per signal, how many records lacked the value (those records are left out).
        skipped: Signals with no value at all in this window, with the reason.
    """

    def __init__(self, values: dict[str, np.ndarray], n_records: int, missing: dict[str, int], skipped: dict[str, str]):
        super().__init__(values)
        self.n_records = n_records
        self.missing = missing
        self.skipped = skipped


def _record_id(record: Any, index: int) -> str:
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        return record["id"]
    return f"#{index}"


def _number(value: Any, rid: str, field: str) -> Optional[float]:
    """A finite float, None when absent or non-finite; raise on a value of the wrong type."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"record {rid}: {field} must be a number, got {value!r}")
    # NaN/inf mean "not computable" (e.g. surprisal of an empty prompt): treated as missing.
    return float(value) if math.isfinite(value) else None


def _completions_mean(record: dict, key: str, rid: str) -> Optional[float]:
    completions = record.get("completions")
    if not completions:
        return None
    values = [_number(c.get(key), rid, f"completions[{i}].{key}") for i, c in enumerate(completions)]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _stop_reason(record: dict, features: dict, rid: str) -> Optional[str]:
    value = features.get("stop_reason")
    if value is None and record.get("completions"):
        value = record["completions"][0].get("finish_reason")
    if value is not None and not isinstance(value, str):
        raise RecordError(f"record {rid}: features.stop_reason must be a string, got {value!r}")
    return value


_FALLBACKS: dict[str, Callable[[dict, str], Optional[float]]] = {
    "prompt_chars": lambda rec, rid: float(len(rec["prompt"])),
    "completion_tokens": lambda rec, rid: _completions_mean(rec, "tokens", rid),
    "completion_logprob": lambda rec, rid: _completions_mean(rec, "mean_logprob", rid),
    "completion_entropy": lambda rec, rid: _completions_mean(rec, "mean_entropy", rid),
}


def _continuous(name: str, record: dict, features: dict, rid: str) -> Optional[float]:
    value = _number(features.get(name), rid, f"features.{name}")
    if value is None and name in _FALLBACKS:
        value = _FALLBACKS[name](record, rid)
    return value


def _check_record(record: Any, rid: str) -> dict:
    """Validate the fields every signal relies on; return the features mapping."""
    if not isinstance(record, dict):
        raise RecordError(f"record {rid}: must be a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("prompt"), str):
        raise RecordError(f"record {rid}: prompt must be a string, got {record.get('prompt')!r:.80}")
    features = record.get("features") or {}
    if not isinstance(features, dict):
        raise RecordError(f"record {rid}: features must be an object, got {features!r:.80}")
    completions = record.get("completions") or []
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise RecordError(f"record {rid}: completions must be a list of objects, got {completions!r:.80}")
    return features


def _token_ids(prompts: list[str], tokenize: Tokenize) -> np.ndarray:
    """All token ids of all prompts, flattened (one entry per token occurrence)."""
    token_lists = tokenize(prompts)
    if len(token_lists) != len(prompts):
        raise ValueError(f"tokenize returned {len(token_lists)} token lists for {len(prompts)} prompts")
    return np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64)


def extract(records: Sequence[dict], tokenize: Optional[Tokenize], *, signals: Optional[Iterable[str]] = None) -> Extraction:
    """Extract every signal's values from traffic records.

    Args:
        records: Traffic records in the contract format (docs/contracts.md).
        tokenize: Batch tokenizer for ``token_frequency``; None skips that signal.
        signals: Names to extract (default: the whole registry).

    Returns:
        An :class:`Extraction`: continuous signals as float64 arrays (one value per record that has
        it), ``stop_reason`` as an object array of strings, ``token_frequency`` as int64 token ids.

    Raises:
        RecordError: A record is not an object, has no string prompt, or a feature of the wrong type.
        KeyError: An unknown signal name.
    """
    names = list(signals) if signals is not None else list(SIGNALS)
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise KeyError(f"unknown drift signal(s) {unknown}; known: {sorted(SIGNALS)}")
    per_record = [n for n in names if n != "token_frequency"]
    columns: dict[str, list] = {n: [] for n in per_record}
    missing: Counter = Counter()
    for index, record in enumerate(records):
        rid = _record_id(record, index)
        features = _check_record(record, rid)
        for name in per_record:
            value = _stop_reason(record, features, rid) if name == "stop_reason" else _continuous(name, record, features, rid)
            if value is None:
                missing[name] += 1
            else:
                columns[name].append(value)
    return _assemble(records, tokenize, names, columns, missing)


def _assemble(records, tokenize, names, columns, missing) -> Extraction:
    values: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name, column in columns.items():
        if not column:
            where = "features.stop_reason / completions[0].finish_reason" if name == "stop_reason" else f"features.{name}"
            skipped[name] = f"no record carries {where}" if records else "no records"
            continue
        values[name] = np.array(column, dtype=object if name == "stop_reason" else np.float64)
    if "token_frequency" in names:
        if tokenize is None:
            skipped["token_frequency"] = "no tokenizer given"
        elif not records:
            skipped["token_frequency"] = "no records"
        else:
            values["token_frequency"] = _token_ids([r["prompt"] for r in records], tokenize)
    return Extraction(values, len(records), dict(missing), skipped)
