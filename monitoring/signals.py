"""Drift signals: the registry of what is measured on a traffic record, and records into columns (validated)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from llmops.infra.traffic.record import TrafficFeatures
from llmops.monitoring.batch import Batch, Tokenize, tokens_from_lists
from llmops.monitoring.tokens import rare_token_share

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
    Signal("rare_token_share", "continuous", "unfamiliar vocabulary (new domains, languages, code) at normal lengths",
           "share of prompt_token_ids (else tokenize(prompt)) outside the reference's common-token set"),
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
           "prompt_token_ids (else tokenize(prompt)) per token occurrence, bucketed into the reference's top-K ids "
           "plus 'other'"),
    Signal("semantic_distance", "continuous",
           "prompts about other things at familiar lengths and vocabulary: topics, intents, tasks (optional)",
           "cosine distance of the prompt's mean-pooled sentence embedding (monitor.semantic_model) to the reference "
           "centroid"),
]}
# Off unless configured: not extracted from records, not listed as skipped in profiles or windows that lack it.
OPTIONAL_SIGNALS = frozenset({"semantic_distance"})
# Signals read from one field of a record's features (with fallbacks), in the record's field order: its numeric
# features (stop_reason is categorical). The token signals are computed from the ids, semantic_distance from the
# prompt by an encoder. A feature without a signal fails here (KeyError), not in a window.
FEATURES = [n for n in TrafficFeatures.model_fields if SIGNALS[n].kind == "continuous"]
TOKEN_SIGNALS = ("rare_token_share", "token_frequency")


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


def record_id(record: Any, index: int) -> str:
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
FALLBACK_FEATURES = (*_FALLBACKS, "stop_reason")  # a null here needs the record body, not just the feature


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


def _token_ids(record: dict, rid: str) -> Optional[list]:
    ids = record.get("prompt_token_ids")
    if ids is not None and (not isinstance(ids, list)
                            or not all(type(t) is int and t >= 0 for t in ids)):  # noqa: E721 (bool is not an id)
        raise RecordError(f"record {rid}: prompt_token_ids must be a list of non-negative integers, got {ids!r:.80}")
    return ids


def record_row(record: Any, rid: str) -> tuple[list[float], Optional[str], Optional[list]]:
    """One record's feature values (NaN = missing, in ``FEATURES`` order), stop reason and token ids.

    Raises:
        RecordError: A record that is not an object, has no string prompt, or a field of the wrong type.
    """
    features = _check_record(record, rid)
    values = [_continuous(name, record, features, rid) for name in FEATURES]
    return [math.nan if v is None else v for v in values], _stop_reason(record, features, rid), _token_ids(record, rid)


def rows_batch(records: Sequence[Any], tokenize: Optional[Tokenize], *, keys: Optional[np.ndarray] = None,
               errors: Optional[list[tuple[int, str]]] = None) -> Batch:
    """Validate records and turn them into a :class:`Batch` (the in-memory path and the slow streaming path).

    Args:
        records: Traffic records in the contract format.
        tokenize: Batch tokenizer for prompts without ``prompt_token_ids``; None leaves them without tokens.
        keys: Sampling keys of the records (see :class:`Batch`).
        errors: When given, a malformed record is left out and ``(index, message)`` appended here;
            otherwise the first one raises :class:`RecordError`.
    """
    rows, reasons, id_lists, kept, untokenized = [], [], [], [], []
    for index, record in enumerate(records):
        try:
            values, reason, ids = record_row(record, record_id(record, index))
        except RecordError as exc:
            if errors is None:
                raise
            errors.append((index, str(exc)))
            continue
        if ids is None and tokenize is not None:
            untokenized.append(len(kept))
        rows.append(values), reasons.append(reason), id_lists.append(ids), kept.append(index)
    if untokenized:
        prompts = [records[kept[i]]["prompt"] for i in untokenized]
        token_lists = tokenize(prompts)
        if len(token_lists) != len(prompts):
            raise ValueError(f"tokenize returned {len(token_lists)} token lists for {len(prompts)} prompts")
        for i, ids in zip(untokenized, token_lists):
            id_lists[i] = list(ids)
    numbers = np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    labels = sorted({r for r in reasons if r is not None})
    lookup = {label: i for i, label in enumerate(labels)}
    codes = np.fromiter((lookup.get(r, -1) if r is not None else -1 for r in reasons), np.int64, len(reasons))
    token_ids, lengths = tokens_from_lists(id_lists)
    return Batch(numbers={n: numbers[:, j] for j, n in enumerate(FEATURES)}, stop_codes=codes, stop_labels=labels,
                 token_ids=token_ids, token_lengths=lengths,
                 keys=keys[kept] if keys is not None else None)


def extract(records: Sequence[dict], tokenize: Optional[Tokenize], *, signals: Optional[Iterable[str]] = None,
            common_tokens: Optional[np.ndarray] = None) -> Extraction:
    """Extract every signal's values from traffic records.

    Args:
        records: Traffic records in the contract format (docs/contracts.md).
        tokenize: Batch tokenizer for records without ``prompt_token_ids``.
        signals: Names to extract (default: the whole registry).
        common_tokens: The reference's common-token ids, needed for ``rare_token_share``.

    Returns:
        An :class:`Extraction`: continuous signals as float64 arrays (one value per record that has
        it), ``stop_reason`` as an object array of strings, ``token_frequency`` as int64 token ids.

    Raises:
        RecordError: A record is not an object, has no string prompt, or a field of the wrong type.
        KeyError: An unknown signal name.
    """
    names = list(signals) if signals is not None else [n for n in SIGNALS if n not in OPTIONAL_SIGNALS]
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise KeyError(f"unknown drift signal(s) {unknown}; known: {sorted(SIGNALS)}")
    if any(n in OPTIONAL_SIGNALS for n in names):
        raise KeyError(f"{sorted(OPTIONAL_SIGNALS & set(names))} need an encoder: see monitoring.semantic")
    batch = rows_batch(records, tokenize)
    columns: dict[str, np.ndarray] = {n: batch.numbers[n] for n in names if n in batch.numbers}
    if "stop_reason" in names:
        columns["stop_reason"] = np.array([batch.stop_labels[c] if c >= 0 else None for c in batch.stop_codes],
                                          dtype=object)
    if "rare_token_share" in names and common_tokens is not None:
        columns["rare_token_share"] = rare_token_share(batch.token_ids, batch.token_lengths, common_tokens)
    values, missing, skipped = {}, Counter(), {}
    for name, column in columns.items():
        present = np.array([v is not None for v in column], bool) if column.dtype == object else np.isfinite(column)
        missing[name] = int(column.size - present.sum())
        if present.any():
            values[name] = column[present]
        else:
            skipped[name] = skip_reason(name, len(records), tokenize is not None)
    if "token_frequency" in names:
        missing["token_frequency"] = int((batch.token_lengths < 0).sum())
        if batch.token_ids.size:
            values["token_frequency"] = batch.token_ids
        else:
            skipped["token_frequency"] = skip_reason("token_frequency", len(records), tokenize is not None)
    if "rare_token_share" in names and common_tokens is None:
        skipped["rare_token_share"] = "needs the reference's common-token set"
    return Extraction(values, len(records), {k: v for k, v in missing.items() if v}, skipped)


def skip_reason(name: str, n_records: int, has_tokenizer: bool) -> str:
    """Why a signal has no value at all in ``n_records`` records."""
    if not n_records:
        return "no records"
    if name in OPTIONAL_SIGNALS:
        return "not computed: monitor.semantic_model is not set for this check"
    if name in TOKEN_SIGNALS:
        return "no record carries prompt_token_ids" + ("" if has_tokenizer else " and no tokenizer given")
    where = "features.stop_reason / completions[0].finish_reason" if name == "stop_reason" else f"features.{name}"
    return f"no record carries {where}"
