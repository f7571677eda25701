"""A batch of traffic records as columns: what every signal needs, before any reference profile is applied."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

Tokenize = Callable[[list[str]], list[list[int]]]


@dataclass
class Batch:
    """Columns of ``n`` records; produced by the row parser (dicts) or the Arrow parser (JSONL bytes).

    Attributes:
        numbers: Per feature signal, float64 of shape (n,); NaN (or ±inf) = the record lacks it.
        stop_codes: int64 (n,): index into ``stop_labels``, -1 = no stop reason.
        stop_labels: The distinct stop reasons of the batch.
        token_ids: int64, every token id of every record that has ids, in record order (flattened).
        token_lengths: int64 (n,): ids per record, -1 = the record has no ids (none given, no tokenizer).
        keys: float64 (n,) uniform sampling keys, drawn in stream order: the window's KS sample keeps
            the values with the smallest keys, so it does not depend on how records were batched.
    """

    numbers: dict[str, np.ndarray]
    stop_codes: np.ndarray
    stop_labels: list[str]
    token_ids: np.ndarray
    token_lengths: np.ndarray
    keys: Optional[np.ndarray] = None

    @property
    def n(self) -> int:
        return int(self.token_lengths.size)


def tokens_from_lists(id_lists: Sequence[Optional[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(flattened ids, per-record lengths with -1 for None) from one list of ids per record."""
    lengths = np.fromiter((len(ids) if ids is not None else -1 for ids in id_lists), np.int64, len(id_lists))
    total = int(lengths[lengths > 0].sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids for ids in id_lists if ids), np.int64, total)
    return flat, lengths


def take(batch: Batch, rows: np.ndarray) -> Batch:
    """The records ``rows`` (sorted int indices or a boolean mask) of ``batch``."""
    rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, np.int64)
    starts = np.concatenate([[0], np.cumsum(np.maximum(batch.token_lengths, 0))])
    lengths = np.maximum(batch.token_lengths[rows], 0)
    owner = np.repeat(np.arange(rows.size), lengths)
    within = np.arange(owner.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return Batch(numbers={n: v[rows] for n, v in batch.numbers.items()}, stop_codes=batch.stop_codes[rows],
                 stop_labels=batch.stop_labels, token_ids=batch.token_ids[starts[rows][owner] + within],
                 token_lengths=batch.token_lengths[rows], keys=batch.keys[rows] if batch.keys is not None else None)
