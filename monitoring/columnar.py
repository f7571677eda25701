"""The fast path of a streamed window: JSONL bytes parsed by Arrow, or compacted Parquet columns, into a Batch.

Arrow parses only the fields the signals read, with an explicit schema, so a field of the wrong
type fails the whole chunk: the caller then re-reads that chunk line by line with the row parser,
which names the bad record. The fast path therefore never judges a record differently from the
row path; it only refuses chunks it cannot take as they are. A compacted hour's Parquet row groups
are already typed: :func:`parquet_table` gives them the same shape, so the same functions read both.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
import pyarrow.parquet as pq

from llmops.infra.traffic.parquet import FEATURE_COLUMNS
from llmops.infra.traffic.record import SCHEMA as RECORD_SCHEMA
from llmops.infra.traffic.record import lenient
from llmops.monitoring.batch import Batch
from llmops.monitoring.signals import FALLBACK_FEATURES, FEATURES


def _as_float(field: pa.Field) -> pa.Field:
    """A number field as float64; other fields as they are."""
    numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
    return field.with_type(pa.float64()) if numeric else field


_RECORD = lenient(RECORD_SCHEMA)  # other producers' records may lack any field: a null, not a refused chunk
_COMPLETION = _RECORD.field("completions").type.value_type
# A projection of the record's schema, with its types except where a comment says why not.
TRAFFIC_SCHEMA = pa.schema([
    # as text, cast by timestamps(): the row parser's reading of a ts is the rule (naive = UTC), and a ts Arrow
    # cannot cast the same way sends its chunk there
    _RECORD.field("ts").with_type(pa.string()),
    _RECORD.field("version"),
    _RECORD.field("prompt"),
    _RECORD.field("prompt_token_ids"),
    # completions are only read for records whose features need the fallbacks (the row parser does that); numbers
    # as floats here and in features: the row parser takes any JSON number for them (a count written 16.0, a
    # prompt_chars 120.0) and the signals are floats, so such a record must not refuse its chunk
    _RECORD.field("completions").with_type(pa.list_(pa.struct([
        _as_float(_COMPLETION.field(name)) for name in ("finish_reason", "tokens", "mean_logprob", "mean_entropy")]))),
    _RECORD.field("features").with_type(pa.struct([_as_float(f) for f in _RECORD.field("features").type])),
])
_PARSE = paj.ParseOptions(explicit_schema=TRAFFIC_SCHEMA, unexpected_field_behavior="ignore")
_READ = paj.ReadOptions(block_size=1 << 20)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STRUCT = TRAFFIC_SCHEMA.field("features").type
# What the check reads of a compacted file; `extra` is null for every record that fits the typed columns
PARQUET_COLUMNS = [*(n for n in TRAFFIC_SCHEMA.names if n not in ("completions", "features")), *FEATURE_COLUMNS,
                   "extra"]


def read_table(data: bytes) -> Optional[pa.Table]:
    """The chunk's records as a table of the fields in TRAFFIC_SCHEMA; None if Arrow cannot take it as is."""
    try:
        # ~1 MB blocks parse faster than one large block, an Arrow buffer faster than a Python file (both
        # measured); Arrow keeps the rows in file order
        return paj.read_json(pa.BufferReader(data), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None


def parquet_columns(row_group: pq.RowGroupMetaData) -> list[str]:
    """The columns of PARQUET_COLUMNS to read from a row group: ``prompt`` only when its statistics count a null.

    The check reads a prompt only to know that a record has one (records without are rebuilt
    whole): prompts are the largest column, as much to decompress as all the others together.
    """
    for i in range(row_group.num_columns):
        column = row_group.column(i)
        if column.path_in_schema == "prompt":
            stats = column.statistics
            if stats is not None and stats.has_null_count and stats.null_count == 0:
                return [c for c in PARQUET_COLUMNS if c != "prompt"]
    return PARQUET_COLUMNS


def parquet_table(table: pa.Table) -> pa.Table:
    """A compacted row group (from PARQUET_COLUMNS) shaped like a parsed chunk: ``features`` one struct of
    TRAFFIC_SCHEMA's types (``prompt`` may be left out, see :func:`parquet_columns`)."""
    fields = [table.column(f"features.{f.name}").combine_chunks().cast(f.type) for f in _STRUCT]
    features = pa.StructArray.from_arrays(fields, fields=list(_STRUCT))
    kept = [c for c in ("ts", "version", "prompt", "prompt_token_ids", "extra") if c in table.column_names]
    return table.select(kept).append_column("features", features)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def timestamps(table: pa.Table) -> Optional[np.ndarray]:
    """``ts`` as int64 microseconds since the epoch (UTC); None if one is null or not ISO 8601 with an offset."""
    column = table.column("ts")
    if column.null_count:
        return None
    try:
        parsed = pc.cast(column, pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # e.g. naive timestamps: the row parser reads them as UTC
    return parsed.cast(pa.int64()).to_numpy()


def versions(table: pa.Table) -> np.ndarray:
    """``version`` as int64, -1 where absent (never equal to a registry version, which starts at 1)."""
    return table.column("version").fill_null(-1).to_numpy()


def needs_rows(table: pa.Table) -> np.ndarray:
    """Records the row parser must take: no prompt, no features, no token ids, or a feature with a fallback missing.

    A table without a ``prompt`` column is one whose prompts are known to be all present.
    """
    features = table.column("features").combine_chunks()
    missing = pc.or_(table.column("prompt_token_ids").is_null(), features.is_null())
    if "prompt" in table.column_names:
        missing = pc.or_(missing, table.column("prompt").is_null())
    for name in FALLBACK_FEATURES:
        column = features.field(name)
        # a NaN/inf counts as absent in the row parser too, which then falls back to the record body
        absent = column.is_null() if name == "stop_reason" else pc.invert(pc.is_finite(column)).fill_null(True)
        missing = pc.or_(missing, absent)
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def table_batch(table: pa.Table) -> Optional[Batch]:
    """A Batch of records that need no fallback (see :func:`needs_rows`), keys unset; None on a negative token id."""
    features = table.column("features").combine_chunks()
    numbers = {name: np.asarray(features.field(name).to_numpy(zero_copy_only=False), np.float64) for name in FEATURES}
    stops = pc.dictionary_encode(features.field("stop_reason"))
    ids = table.column("prompt_token_ids").combine_chunks()
    flat = ids.flatten().to_numpy().astype(np.int64)
    if flat.size and flat.min() < 0:
        return None  # not a token id: the row parser names the record
    return Batch(numbers=numbers, stop_codes=stops.indices.fill_null(-1).to_numpy().astype(np.int64),
                 stop_labels=stops.dictionary.to_pylist(), token_ids=flat,
                 token_lengths=pc.list_value_length(ids).to_numpy().astype(np.int64))
