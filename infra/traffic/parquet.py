"""The compacted traffic format: a traffic record's Parquet columns, JSONL into them, and rows back into records."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
import pyarrow.parquet as pq

from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.record import SCHEMA as RECORD_SCHEMA
from llmops.infra.traffic.record import lenient

FORMAT = 2  # the manifest's "format": bumped when SCHEMA changes (2 added x_request_id and user; format 1 files
# lack those two columns and read back as before)
_S = pa.string()
# The record's schema with every field nullable: the log holds other producers' records too, and a value that
# does not fit its column is stored null there (and whole in `extra`).
_RECORD = lenient(RECORD_SCHEMA)
TIMESTAMP = _RECORD.field("ts").type
# A record's fields typed as docs/contracts.md has them, as Arrow's JSON parser reads them: `ts` as its text, which
# arrow_columns checks is what isoformat writes (only such a text comes back exactly from the timestamp column).
# A value of any other shape is kept in `extra`.
FIELDS: dict[str, pa.DataType] = {f.name: _S if f.name == "ts" else f.type for f in _RECORD}
FEATURES: dict[str, pa.DataType] = {f.name: f.type for f in FIELDS["features"]}
FEATURE_COLUMNS = [f"features.{name}" for name in FEATURES]
# What compaction adds to a record's columns
COMPACTION_COLUMNS = pa.schema([
    ("extra", _S),  # JSON object of the fields that did not fit their column, or null (every server-written record)
    ("source_file", _S), ("source_line", pa.int32()),  # where the record was in the JSONL log: messages name it
])
# The stored columns: the record's, `features` flattened into one column per feature (read one by one)
SCHEMA = pa.schema([
    *(f for f in _RECORD if f.name != "features"),
    *(f.with_name(f"features.{f.name}") for f in _RECORD.field("features").type),
    *COMPACTION_COLUMNS,
])
_PARSE = paj.ParseOptions(explicit_schema=pa.schema(list(FIELDS.items())), unexpected_field_behavior="error")
_READ = paj.ReadOptions(block_size=1 << 20)
# What datetime.isoformat() writes for a UTC instant: only such strings are rebuilt exactly from the timestamp
_ISO_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?\+00:00$"


def line_count(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def arrow_columns(data: bytes) -> Optional[pa.Table]:
    """JSONL bytes as compacted columns (without the source columns), parsed by Arrow; None when a line needs
    :func:`record_columns`: not JSON, blank, a field outside the contract or of another type, a negative token
    id, or a ``ts`` that ``isoformat`` would not write back the same."""
    try:
        table = paj.read_json(pa.BufferReader(data), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    ts = table.column("ts")
    if (table.num_rows != line_count(data) or ts.null_count
            or not pc.all(pc.match_substring_regex(ts, _ISO_UTC)).as_py()
            or pc.any(pc.match_substring(ts, ".000000+")).as_py()):  # isoformat drops zero microseconds
        return None
    ids = pc.list_flatten(table.column("prompt_token_ids"))
    if len(ids) and pc.min(ids).as_py() < 0:
        return None
    columns = {name: table.column(name) for name in FIELDS if name != "features"}
    columns["ts"] = pc.cast(ts, TIMESTAMP)
    for name, values in zip(FEATURES, table.column("features").flatten()):  # a null struct gives null fields
        columns[f"features.{name}"] = values
    columns["extra"] = pa.nulls(table.num_rows, _S)
    return pa.table(columns)


def _fits(value: Any, typ: pa.DataType) -> bool:
    """Whether a parsed JSON value is stored exactly by a column of type ``typ`` (null always is)."""
    if value is None:
        return True
    if typ == FIELDS["prompt_token_ids"]:  # token ids: non-negative
        bound = 1 << (typ.value_type.bit_width - 1)
        return isinstance(value, list) and all(type(t) is int and 0 <= t < bound for t in value)  # noqa: E721
    if pa.types.is_string(typ):
        return isinstance(value, str)
    if pa.types.is_integer(typ):
        bound = 1 << (typ.bit_width - 1)
        return type(value) is int and -bound <= value < bound  # noqa: E721 (a bool is not a number here)
    if pa.types.is_floating(typ):
        return type(value) is float or (type(value) is int and abs(value) <= 1 << 53)  # noqa: E721
    if pa.types.is_list(typ):
        return isinstance(value, list) and all(v is not None and _fits(v, typ.value_type) for v in value)
    if pa.types.is_struct(typ):
        names = {f.name for f in typ}
        return isinstance(value, dict) and all(k in names and _fits(v, typ.field(k).type) for k, v in value.items())
    raise TypeError(f"no rule for {typ}")


def record_columns(records: list[dict], stamps: list[datetime]) -> pa.Table:
    """Parsed records and their parsed ``ts`` as compacted columns (without the source columns).

    A field whose value does not fit its column (a string where a number belongs, an unknown
    feature, a stop given as a string, a ``ts`` in another format) is stored whole in ``extra``, as
    is every field outside the contract, so :func:`table_records` gives the record back as written.
    """
    columns: dict[str, list] = {name: [] for name in SCHEMA.names[:-2]}
    for record, stamp in zip(records, stamps):
        extra = {k: v for k, v in record.items() if k not in FIELDS}
        columns["ts"].append(stamp)
        if record["ts"] != stamp.isoformat():
            extra["ts"] = record["ts"]
        for name, typ in FIELDS.items():
            if name == "ts":
                continue
            value = record.get(name)
            if not _fits(value, typ):
                extra[name], value = value, None
            if name == "features":
                for feature in FEATURES:
                    columns[f"features.{feature}"].append(None if value is None else value.get(feature))
            else:
                columns[name].append(value)
        # the standard library writes NaN as json.dumps does (orjson would turn it into null)
        columns["extra"].append(json.dumps(extra, ensure_ascii=False) if extra else None)
    return pa.table({name: pa.array(values, SCHEMA.field(name).type) for name, values in columns.items()})


def with_source(table: pa.Table, files: list[str], counts: list[int]) -> pa.Table:
    """``table`` (the lines of ``files``, ``counts`` lines each, in order) with its source columns."""
    owner = np.repeat(np.arange(len(files)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    names = pa.array(files, _S).take(pa.array(owner))
    lines = pa.array(np.arange(owner.size) - starts + 1, SCHEMA.field("source_line").type)
    return table.append_column("source_file", names).append_column("source_line", lines)


def table_records(table: pa.Table) -> list[dict]:
    """Compacted rows as traffic records: the contract's fields (null where the record had none), then ``extra``.

    Numbers in float columns come back as floats (``16`` as ``16.0``, equal in Python and JSON
    readers); a record whose features are all null gets ``features: None``.
    """
    names = [n for n in table.column_names if n not in ("source_file", "source_line")]
    cols = {name: table.column(name).to_pylist() for name in names}
    records = []
    for i in range(table.num_rows):
        record = {name: cols[name][i] for name in FIELDS if name in cols and name != "features"}
        if "ts" in record:
            record["ts"] = record["ts"].isoformat()
        features = {name: cols[f"features.{name}"][i] for name in FEATURES if f"features.{name}" in cols}
        if features:
            record["features"] = features if any(v is not None for v in features.values()) else None
        if cols.get("extra") and cols["extra"][i] is not None:
            record.update(json.loads(cols["extra"][i]))
        records.append(record)
    return records


@contextmanager
def open_parquet(store: ArtifactStore, key: str) -> Iterator[pq.ParquetFile]:
    """A compacted file for reading row group by row group; a remote one is downloaded to a temporary file first."""
    path = store.local_path(key)
    with tempfile.TemporaryDirectory(prefix="llmops-traffic-") as tmp:
        if path is None:
            path = store.get_file(key, Path(tmp) / "hour.parquet")
        with pq.ParquetFile(path) as parquet:
            yield parquet


def _groups_in_window(store: ArtifactStore, key: str, start: datetime, end: datetime,
                      columns: Optional[list[str]] = None) -> Iterator[pa.Table]:
    """Each row group of a compacted file (``columns`` of it, default all) with only its rows of ``start <= ts <
    end``, in file order."""
    bounds = pa.scalar(start, TIMESTAMP), pa.scalar(end, TIMESTAMP)
    with open_parquet(store, key) as parquet:
        for i in range(parquet.num_row_groups):
            group = parquet.read_row_group(i, columns=columns)
            ts = group.column("ts")
            yield group.filter(pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1])))


def read_prompts(store: ArtifactStore, key: str, start: datetime, end: datetime, version: int) -> list[str]:
    """The prompts of ``version``'s records of a compacted file with ``start <= ts < end``, in file order; only
    the three columns are read (the prompt-level drift signals read a window a second time)."""
    prompts: list[str] = []
    for group in _groups_in_window(store, key, start, end, ["ts", "version", "prompt"]):
        served = group.filter(pc.equal(group.column("version"), version))
        prompts += [p for p in served.column("prompt").to_pylist() if isinstance(p, str)]
    return prompts


def read_records(store: ArtifactStore, key: str, start: datetime, end: datetime) -> list[dict]:
    """The records of a compacted file with ``start <= ts < end``, in file order."""
    records: list[dict] = []
    for group in _groups_in_window(store, key, start, end):
        records += table_records(group)
    return records
