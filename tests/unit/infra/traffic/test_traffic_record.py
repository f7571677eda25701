"""The typed traffic record: the log lines it writes, what it refuses, the one Arrow schema and the stored format."""
from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

from llmops.infra.store import LocalStore
from llmops.infra.traffic import parquet as traffic_parquet
from llmops.infra.traffic.compaction import compact
from llmops.infra.traffic.log import line_record, parse_ts, read_window, write_records
from llmops.infra.traffic.record import (
    SCHEMA,
    TokenId,
    TrafficFeatures,
    TrafficRecord,
    arrow_schema,
    arrow_type,
    lenient,
)
from llmops.models.data.sources import TRAFFIC_FIELD
from llmops.models.model.generation import Completion, PromptScore, SamplingParams
from llmops.models.model.traffic import traffic_record
from llmops.models.serving.capture import TrafficBuffer
from llmops.monitoring import columnar
from llmops.monitoring.synthetic import synthetic_records

T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)
_S, _I, _F = pa.string(), pa.int64(), pa.float64()
# The compacted Parquet columns of FORMAT 1, written out by hand: files compacted under them must stay readable, so
# a change of the record that changes them must fail here (and bump traffic_parquet.FORMAT with a migration).
FORMAT_1 = pa.schema([
    ("id", _S), ("ts", pa.timestamp("us", tz="UTC")), ("model", _S), ("version", _I), ("variant", _S),
    ("prompt", _S), ("prompt_token_ids", pa.list_(pa.int32())),
    ("params", pa.struct([("max_tokens", _I), ("temperature", _F), ("top_p", _F), ("top_k", _I), ("n", _I),
                          ("stop", pa.list_(_S))])),
    ("completions", pa.list_(pa.struct([("text", _S), ("finish_reason", _S), ("tokens", _I), ("mean_logprob", _F),
                                        ("mean_entropy", _F)]))),
    ("features.prompt_chars", _I), ("features.prompt_tokens", _I), ("features.bytes_per_token", _F),
    ("features.prompt_surprisal", _F), ("features.completion_tokens", _F), ("features.completion_logprob", _F),
    ("features.completion_entropy", _F), ("features.stop_reason", _S), ("features.latency_ms", _F),
    ("extra", _S), ("source_file", _S), ("source_line", pa.int32()),
])
# FORMAT 2: format 1 plus the request's X-Request-ID and `user`, nullable strings after the record's own columns
_RECORD_COLUMNS = FORMAT_1.names.index("features.prompt_chars")
FORMAT_2 = pa.schema([*list(FORMAT_1)[:_RECORD_COLUMNS], ("x_request_id", _S), ("user", _S),
                      *list(FORMAT_1)[_RECORD_COLUMNS:]])


def _same(a, b) -> bool:
    """Equality where NaN equals NaN and an int equals the float of the same value (as JSON readers take them)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and not isinstance(a, bool) and a == b)


def _odd_records() -> list[dict]:
    """Contract records with the values the synthetic ones lack: NaN, nulls, several choices, stops, unicode."""
    records = synthetic_records(4, seed=7, start=T0)
    records[0]["features"]["prompt_surprisal"] = float("nan")  # an empty prompt's surprisal
    records[0]["features"]["latency_ms"] = None  # a reference record generated in a batch
    records[1]["params"].update(top_k=40, top_p=None, stop=["\n", "###"], temperature=0.0)
    records[1]["completions"].append({**records[1]["completions"][0], "text": "ünïcode ✓ \"quoted\"", "tokens": 3})
    records[1]["params"]["n"] = 2
    records[2]["prompt"], records[2]["prompt_token_ids"] = "", []
    records[3]["features"]["bytes_per_token"] = 1e-05  # a float whose repr has an exponent
    records[3]["ts"] = "2025-03-04T14:00:00+00:00"  # isoformat leaves out zero microseconds
    return records


def _score_and_completions() -> tuple[PromptScore, list[Completion]]:
    score = PromptScore(ids=(464, 1917, 0), mean_nll=3.25)
    completions = [Completion("ab", "length", 16, -2.5, 2.25), Completion("c", "stop", 1, -0.5, 1.75)]
    return score, completions


def test_a_record_writes_the_line_json_dumps_writes_for_the_same_values():
    for record in synthetic_records(50, seed=1) + _odd_records():
        line = json.dumps(record, ensure_ascii=False)
        typed = TrafficRecord.model_validate_json(line)
        assert typed.json_line() == line  # byte for byte: readers of the log see no change
        assert _same(typed.model_dump(), record)
        assert _same(json.loads(typed.json_line()), line_record(line)[0])


def test_traffic_record_builds_the_record_the_server_captured_before():
    score, completions = _score_and_completions()
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=0.7, top_k=40, stop=("\n",))
    record = traffic_record(prompt="Héllo", score=score, completions=completions, params=params, n=2,
                            latency_ms=41.5, model="lm", version=3, variant="int8", request_id="cmpl-1",
                            ts=T0 + timedelta(microseconds=5), x_request_id="trace-7", user="u-1")
    before = {  # what traffic_record returned as a dict, for the same inputs (the last two keys: since format 2)
        "id": "cmpl-1", "ts": "2025-03-04T14:00:00.000005+00:00", "model": "lm", "version": 3, "variant": "int8",
        "prompt": "Héllo", "prompt_token_ids": [464, 1917, 0],
        "params": {"max_tokens": 16, "temperature": 0.7, "top_p": None, "top_k": 40, "n": 2, "stop": ["\n"]},
        "completions": [
            {"text": "ab", "finish_reason": "length", "tokens": 16, "mean_logprob": -2.5, "mean_entropy": 2.25},
            {"text": "c", "finish_reason": "stop", "tokens": 1, "mean_logprob": -0.5, "mean_entropy": 1.75},
        ],
        "features": {"prompt_chars": 5, "prompt_tokens": 3, "bytes_per_token": 2.0, "prompt_surprisal": 3.25,
                     "completion_tokens": 8.5, "completion_logprob": -1.5, "completion_entropy": 2.0,
                     "stop_reason": "length", "latency_ms": 41.5},
        "x_request_id": "trace-7", "user": "u-1",
    }
    assert isinstance(record, TrafficRecord) and record.ts == T0 + timedelta(microseconds=5)
    assert record.json_line() == json.dumps(before, ensure_ascii=False)
    greedy = traffic_record(prompt="x", score=score, completions=completions[:1],
                            params=SamplingParams(do_sample=False), n=1, latency_ms=None, model="lm", version=1,
                            variant="fp32")
    assert greedy.params.temperature == 0.0 and greedy.params.stop is None and greedy.features.latency_ms is None
    assert greedy.id.startswith("cmpl-") and greedy.ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(note="x"), "note"),  # a field outside the contract
    (lambda r: r["features"].update(new_feature=1.5), "features.new_feature"),
    (lambda r: r.update(version=True), "version"),  # a bool is not a version
    (lambda r: r["features"].update(prompt_tokens="31"), "features.prompt_tokens"),
    (lambda r: r["features"].update(prompt_tokens=31.0), "features.prompt_tokens"),
    (lambda r: r.update(prompt_token_ids=[3, -1]), "prompt_token_ids.1"),
    (lambda r: r.update(prompt_token_ids=[1 << 31]), "prompt_token_ids.0"),  # beyond the stored int32 column
    (lambda r: r.update(ts="2025-03-04T14:05:00"), "ts"),  # naive: which hour would it go in?
    (lambda r: r["features"].update(stop_reason="eos"), "features.stop_reason"),
    (lambda r: r["params"].update(stop="\n"), "params.stop"),
    (lambda r: r.update(completions=[]), "completions"),
    (lambda r: r.update(prompt=None), "prompt"),
    (lambda r: r["features"].pop("prompt_surprisal"), "features.prompt_surprisal"),
])
def test_values_outside_the_contract_are_refused_naming_the_field(mutate, field):
    record = copy.deepcopy(synthetic_records(1, seed=2, start=T0)[0])
    mutate(record)
    with pytest.raises(ValidationError) as caught:
        TrafficRecord.model_validate_json(json.dumps(record))
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [field]


def test_optional_values_may_be_none_and_a_record_is_frozen():
    record = synthetic_records(1, seed=3, start=T0)[0]
    record["params"].update(top_p=None, top_k=None, stop=None)
    record["features"]["latency_ms"] = None
    typed = TrafficRecord.model_validate_json(json.dumps(record))
    assert typed.features.latency_ms is None and typed.params.top_k is None
    without = {k: v for k, v in record["features"].items() if k != "latency_ms"}  # None is also the default
    assert TrafficFeatures(**without).latency_ms is None
    with pytest.raises(ValidationError, match="frozen"):
        typed.version = 2


class _Inner(BaseModel):
    a: int
    b: Optional[str] = None


class _Outer(BaseModel):
    ids: list[TokenId]
    inner: _Inner
    items: list[_Inner]
    at: datetime
    x: Optional[float]
    counts: Optional[list[int]]


def test_the_arrow_schema_is_walked_from_the_model_annotations():
    inner = pa.struct([pa.field("a", _I, nullable=False), ("b", _S)])
    assert arrow_schema(_Outer) == pa.schema([
        pa.field("ids", pa.list_(pa.field("item", pa.int32(), nullable=False)), nullable=False),
        pa.field("inner", inner, nullable=False),
        pa.field("items", pa.list_(pa.field("item", inner, nullable=False)), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("x", _F),
        pa.field("counts", pa.list_(pa.field("item", _I, nullable=False))),
    ])
    assert lenient(arrow_schema(_Outer)).field("items").type == pa.list_(pa.struct([("a", _I), ("b", _S)]))
    for annotation in (dict[str, int], Union[int, str], bool, bytes):
        with pytest.raises(TypeError, match="no Arrow type"):
            arrow_type(annotation)
    assert SCHEMA.field("features").type.field("latency_ms").nullable
    assert not SCHEMA.field("features").type.field("prompt_surprisal").nullable  # NaN, never null, when uncomputable
    assert SCHEMA.field(TRAFFIC_FIELD).type == _S  # what traffic:// ingest reads is a string field of the record


def test_the_stored_parquet_schema_is_the_format_2_schema_field_by_field():
    assert traffic_parquet.FORMAT == 2
    derived = [(f.name, f.type, f.nullable) for f in traffic_parquet.SCHEMA]
    written = [(f.name, f.type, f.nullable) for f in FORMAT_2]
    for have, want in zip(derived, written):
        assert have == want
    assert len(derived) == len(written) and traffic_parquet.SCHEMA.equals(FORMAT_2)
    assert traffic_parquet.FEATURE_COLUMNS == [n for n in FORMAT_2.names if n.startswith("features.")]
    json_fields = {f.name: _S if f.name == "ts" else f.type for f in FORMAT_2 if "." not in f.name}
    json_fields["features"] = pa.struct([(f.name[len("features."):], f.type) for f in FORMAT_2
                                         if f.name.startswith("features.")])
    assert sorted(n for n in json_fields if n in traffic_parquet.FIELDS) == sorted(traffic_parquet.FIELDS)
    assert {n: json_fields[n] for n in traffic_parquet.FIELDS} == traffic_parquet.FIELDS


def test_a_file_compacted_under_format_1_reads_back_identically(tmp_path):
    # format 1 records had no x_request_id or user: a format 1 file gives them back without those keys
    records = [{k: v for k, v in r.items() if k not in ("x_request_id", "user")}
               for r in synthetic_records(30, seed=4, start=T0) + _odd_records()]
    stamps = [parse_ts(r["ts"]) for r in records]
    table = traffic_parquet.record_columns(records, stamps)
    table = table.drop_columns(["x_request_id", "user"])
    table = traffic_parquet.with_source(table, ["a.jsonl"], [len(records)]).cast(FORMAT_1)
    pq.write_table(table, tmp_path / "hour.parquet", compression="zstd")
    read = pq.read_table(tmp_path / "hour.parquet")
    assert read.schema.equals(FORMAT_1)
    assert all(_same(a, b) for a, b in zip(traffic_parquet.table_records(read), records))
    group = pq.ParquetFile(tmp_path / "hour.parquet").read_row_group(0, columns=columnar.PARQUET_COLUMNS)
    batch = columnar.table_batch(columnar.parquet_table(group))
    assert batch.n == len(records) and batch.token_ids.size == sum(len(r["prompt_token_ids"]) for r in records)


def test_the_log_parse_schemas_are_projections_of_the_one_schema():
    log = lenient(SCHEMA)
    assert {n: t for n, t in traffic_parquet.FIELDS.items() if n != "ts"} == {
        f.name: f.type for f in log if f.name != "ts"}
    fast = columnar.TRAFFIC_SCHEMA
    for name in ("version", "prompt", "prompt_token_ids"):
        assert fast.field(name) == log.field(name)
    assert fast.field("prompt_token_ids").type == pa.list_(pa.int32())  # the stored width, not a second one
    assert fast.field("ts").type == _S and traffic_parquet.FIELDS["ts"] == _S
    features = fast.field("features").type
    assert [f.name for f in features] == list(TrafficFeatures.model_fields)
    assert {f.name: f.type for f in features if f.type != _F} == {"stop_reason": _S}
    completion = fast.field("completions").type.value_type
    assert {f.name for f in completion} <= {f.name for f in log.field("completions").type.value_type}
    assert completion.field("tokens").type == _F


def test_captured_records_take_every_fast_path_and_come_back_as_written(tmp_path):
    store = LocalStore(tmp_path / "store")
    score, completions = _score_and_completions()
    params = SamplingParams(max_new_tokens=16, do_sample=True, top_k=5)
    records = [traffic_record(prompt=f"prompt {i}", score=score, completions=completions[: 1 + i % 2], params=params,
                              n=1 + i % 2, latency_ms=None if i % 3 else 12.5, model="lm", version=1, variant="fp32",
                              ts=T0 + timedelta(seconds=i, microseconds=i % 2))
               for i in range(10)]
    buffer = TrafficBuffer(store, "lm", limit=100, spool=tmp_path / "spool")
    assert buffer.add(records) == 10 and buffer.flush() == 10
    (key,) = store.list("traffic/lm")
    data = store.get_bytes(key)
    assert data == "".join(r.json_line() + "\n" for r in records).encode()
    fast = traffic_parquet.arrow_columns(data)
    assert fast is not None and fast.column("extra").null_count == 10  # every value fits its typed column
    parsed = columnar.read_table(data)
    assert parsed is not None and not columnar.needs_rows(parsed).any()
    compact(store, "lm", T0 + timedelta(hours=1))
    window = read_window(store, "lm", T0, T0 + timedelta(hours=1))
    assert window.files[0].endswith(".parquet") and len(window) == 10
    for back, record in zip(window, records):
        assert TrafficRecord.model_validate_json(json.dumps(back)).json_line() == record.json_line()


def test_write_records_takes_typed_records_and_dicts_alike(tmp_path):
    store = LocalStore(tmp_path / "store")
    dicts = synthetic_records(3, seed=5, start=T0 + timedelta(minutes=59))
    typed = [TrafficRecord.model_validate_json(json.dumps(r)) for r in dicts]
    key = write_records(store, "lm", [typed[0], dicts[1], typed[2]])
    assert key.startswith("traffic/lm/2025/03/04/14/")  # the first record's hour, from its typed ts
    assert store.get_bytes(key) == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dicts).encode()
