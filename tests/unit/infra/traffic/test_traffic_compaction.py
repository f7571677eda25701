"""Traffic compaction: exact round trips, no double reads, closed hours only, crashes, malformed lines, readers, CLI."""
from __future__ import annotations

import json
import math
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmops.flows.cli import main
from llmops.flows.local.server import quiet_prefect_env
from llmops.infra.config import DataConfig, MonitorConfig
from llmops.infra.store import LocalStore, open_store
from llmops.infra.traffic import compaction as traffic_compact
from llmops.infra.traffic import parquet as traffic_parquet
from llmops.infra.traffic.compaction import LOCK, closed_before, compact, compact_hour
from llmops.infra.traffic.log import MANIFEST, line_record, parse_ts, read_window, window_files, write_records
from llmops.models.data.sources import resolve_source
from llmops.monitoring.check import check_store_window
from llmops.monitoring.profile import build_profile
from llmops.monitoring.signals import FEATURES
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)  # long closed whatever the clock says
CFG = MonitorConfig(evidently_report=False)
HOUR = "traffic/lm/2025/03/04/14"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="module")
def profile():
    return build_profile(synthetic_records(1000, seed=1), toy_tokenize, CFG, model_name="lm", model_version=1)


def _hours(store, hours: int = 3, per_hour: int = 120) -> list[dict]:
    """Traffic of ``hours`` hours from T0, two files per hour, with versions, fallbacks and odd fields mixed in."""
    records = []
    for h in range(hours):
        batch = synthetic_records(per_hour, TrafficShape(words_mean=26), seed=50 + h, start=T0 + timedelta(hours=h),
                                  spacing_s=25)
        for r in batch[::10]:
            r["version"] = 2
        for r in batch[5::17]:
            del r["features"]["prompt_chars"], r["prompt_token_ids"]  # the fallbacks: len(prompt), the tokenizer
        batch[3]["features"]["prompt_tokens"] = "31"  # malformed for monitoring, kept whole in `extra`
        batch[7]["version"], batch[8]["note"] = "1", "a field outside the contract"
        write_records(store, "lm", batch[:70])
        write_records(store, "lm", batch[70:])
        records += batch
    return records


def _edge_records() -> list[dict]:
    """Records that do not fit the typed columns one way or another: every one must come back as written."""
    base = synthetic_records(12, seed=3, start=T0 + timedelta(minutes=5))
    base[0]["ts"] = "2025-03-04T14:05:00"  # naive: read as UTC
    base[1]["ts"] = "2025-03-04T16:06:00+02:00"  # another offset, same hour in UTC
    base[2]["ts"] = "2025-03-04T14:07:00.000000+00:00"  # isoformat would drop the zero microseconds
    base[3]["features"]["prompt_surprisal"] = float("nan")  # json.dumps writes NaN
    base[4]["features"]["new_feature"] = 1.5
    base[5]["features"]["prompt_tokens"] = "31"
    base[6]["params"]["stop"] = "\n"
    base[7]["prompt_token_ids"] = [3, -1]
    base[8]["version"] = True
    base[9]["prompt_token_ids"] = [1 << 40]
    base[10]["features"]["latency_ms"] = 41  # an int in a float column: comes back as 41.0, equal
    base[11]["prompt"], base[11]["trace"] = "ünïcode ✓", {"span": [1, 2]}
    return base


def _same(a, b) -> bool:
    """Equality where NaN equals NaN (JSON's NaN read back is another float object)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and not isinstance(a, bool) and a == b)


def _ids(window) -> list[str]:
    return [r["id"] for r in window]


def test_compaction_round_trips_every_record_exactly(store):
    clean = synthetic_records(300, seed=2, start=T0, spacing_s=10)
    write_records(store, "lm", clean)
    edge = _edge_records()
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in edge)
    store.put_text(f"{HOUR}/zz-edge.jsonl", body)  # sorts after the uuid-named file of the clean records
    (key,) = compact(store, "lm", T0 + timedelta(hours=1))
    window = read_window(store, "lm", T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert window.files == [key] and not window.malformed
    by_id = {r["id"]: r for r in window}
    assert len(window) == 312 and all(_same(by_id[r["id"]], r) for r in clean + edge)
    schema = pq.read_schema(store.local_path(key))
    assert schema.field("prompt_token_ids").type == pa.list_(pa.int32())
    assert {f"features.{name}" for name in FEATURES} | {"features.stop_reason"} <= set(schema.names)
    extra = pq.read_table(store.local_path(key), columns=["extra"]).column("extra").to_pylist()
    assert extra[:300] == [None] * 300  # server records fit the typed columns
    assert [i for i, e in enumerate(extra[300:]) if e is None] == [3, 10]  # NaN and an int fit a float column


def test_arrow_and_the_row_converter_write_the_same_columns():
    records = synthetic_records(200, seed=4)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    parsed = [line_record(line)[0] for line in data.splitlines()]
    by_rows = traffic_parquet.record_columns(parsed, [parse_ts(r["ts"]) for r in parsed])
    assert traffic_parquet.arrow_columns(data).equals(by_rows)
    assert traffic_parquet.arrow_columns(data + b"\n" + data) is None  # a blank line would shift the line numbers


def test_readers_never_read_a_record_twice_and_late_files_are_picked_up(store):
    records = _hours(store)
    start, end = T0, T0 + timedelta(hours=3)
    jsonl = read_window(store, "lm", start, end)
    keys = compact(store, "lm", T0 + timedelta(hours=2))
    assert [k.split("/")[5] for k in keys] == ["14", "15"] and all(k.endswith(".parquet") for k in keys)
    assert [k.endswith(".parquet") for k in window_files(store, "lm", start, end)] == [True, True, False, False]
    assert _ids(read_window(store, "lm", start, end)) == _ids(jsonl)  # files in name order, as before
    assert sorted(_ids(jsonl)) == sorted(r["id"] for r in records)
    late = synthetic_records(5, seed=9, start=T0 + timedelta(minutes=59), spacing_s=30)  # a flush after compaction
    write_records(store, "lm", late)
    with_late = read_window(store, "lm", start, end)
    assert _ids(with_late) == _ids(jsonl)[:120] + [r["id"] for r in late] + _ids(jsonl)[120:]
    first = store.get_json(f"{HOUR}/{MANIFEST}")
    assert compact(store, "lm", T0 + timedelta(hours=2)) == [
        f"{HOUR}/{store.get_json(f'{HOUR}/{MANIFEST}')['parquet']}"]
    assert _ids(read_window(store, "lm", start, end)) == _ids(with_late)  # same records, same order
    assert compact(store, "lm", T0 + timedelta(hours=2)) == []  # idempotent
    second = store.get_json(f"{HOUR}/{MANIFEST}")
    assert second["superseded"] == [first["parquet"]] and store.exists(f"{HOUR}/{first['parquet']}")
    write_records(store, "lm", synthetic_records(2, seed=10, start=T0 + timedelta(minutes=30)))
    compact(store, "lm", T0 + timedelta(hours=2))  # a reader of the first file had a whole compaction to finish
    assert not store.exists(f"{HOUR}/{first['parquet']}") and store.exists(f"{HOUR}/{second['parquet']}")


def test_open_hours_are_not_compacted(store):
    _hours(store, hours=2)
    assert closed_before(T0 + timedelta(hours=2), timedelta(minutes=10), 2.0) == T0 + timedelta(hours=1, minutes=50)
    assert len(compact(store, "lm", T0 + timedelta(hours=1, minutes=50))) == 1
    assert compact_hour(store, "lm", T0 + timedelta(hours=1), before=T0 + timedelta(hours=1, minutes=50)) is None
    assert not store.exists(f"traffic/lm/2025/03/04/15/{MANIFEST}")
    with pytest.raises(ValueError,
                       match=r"grace period \(1 s\) must be longer than the server's flush interval \(2 s\)"):
        closed_before(T0, timedelta(seconds=1), 2.0)


def test_a_crash_before_the_manifest_leaves_readers_on_the_jsonl(store, monkeypatch):
    _hours(store, hours=1)
    jsonl = _ids(read_window(store, "lm", T0, T0 + timedelta(hours=1)))
    commit = store.put_json

    def crash(key, obj):
        if key.endswith(MANIFEST):
            raise OSError("killed")
        return commit(key, obj)

    monkeypatch.setattr(store, "put_json", crash)
    with pytest.raises(OSError, match="killed"):
        compact(store, "lm", T0 + timedelta(hours=1))
    orphan = [k for k in store.list(HOUR) if k.endswith(".parquet")]
    assert len(orphan) == 1 and not store.exists(f"{HOUR}/{LOCK}")  # the lock is released
    assert all(k.endswith(".jsonl") for k in window_files(store, "lm", T0, T0 + timedelta(hours=1)))
    assert _ids(read_window(store, "lm", T0, T0 + timedelta(hours=1))) == jsonl
    monkeypatch.setattr(store, "put_json", commit)
    assert compact(store, "lm", T0 + timedelta(hours=1)) == orphan  # the retry rewrites the same file
    assert _ids(read_window(store, "lm", T0, T0 + timedelta(hours=1))) == jsonl


def test_a_held_lock_skips_the_hour_and_a_stale_one_is_taken_over(store):
    _hours(store, hours=1)
    now = datetime.now(timezone.utc)
    store.put_json(f"{HOUR}/{LOCK}", {"owner": "other", "at": now.isoformat()})
    assert compact(store, "lm", T0 + timedelta(hours=1)) == []
    store.put_json(f"{HOUR}/{LOCK}", {"owner": "crashed", "at": (now - timedelta(hours=1)).isoformat()})
    assert len(compact(store, "lm", T0 + timedelta(hours=1))) == 1 and not store.exists(f"{HOUR}/{LOCK}")


def test_malformed_lines_are_kept_and_counted_even_after_the_jsonl_is_deleted(store, profile, tmp_path):
    good = synthetic_records(3, start=T0 + timedelta(minutes=5))
    lines = [json.dumps(good[0]).encode(), b"{truncated", json.dumps(good[1]).encode(), b"[1, 2]",
             json.dumps({**good[2], "ts": None}).encode(), b"\xc3\x28 not utf-8"]
    store.put_bytes(f"{HOUR}/broken.jsonl", b"\n".join(lines) + b"\n\n")
    before = read_window(store, "lm", T0, T0 + timedelta(hours=1))
    jsonl_check = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, None, CFG, tmp_path / "a")
    compact(store, "lm", T0 + timedelta(hours=1), delete_jsonl=True)
    manifest = store.get_json(f"{HOUR}/{MANIFEST}")
    assert manifest["malformed_lines"] == 4 and manifest["records"] == 2 and not store.exists(f"{HOUR}/broken.jsonl")
    entries = [json.loads(line) for line in store.get_text(f"{HOUR}/{manifest['malformed_file']}").splitlines()]
    assert [(e["line"], e.get("raw")) for e in entries] == [(2, "{truncated"), (4, "[1, 2]"), (5, lines[4].decode()),
                                                             (6, None)]
    assert entries[3]["raw_base64"] and entries[3]["file"] == "broken.jsonl"
    after = read_window(store, "lm", T0, T0 + timedelta(hours=1))
    assert after == before and after.malformed == before.malformed and len(after.malformed) == 4
    assert after.malformed[2] == f"{HOUR}/broken.jsonl:5: bad ts: ts must be an ISO-8601 string, got None"
    parquet_check = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, None, CFG, tmp_path / "b")
    assert parquet_check.notes == jsonl_check.notes and "4 malformed traffic line(s)" in parquet_check.notes[0]


def _signals(report) -> dict:
    rows = {name: s.model_dump() for name, s in report.signals.items()}
    for row in rows.values():  # running sums add in another order per batch
        row["current_mean"] = round(row["current_mean"], 9) if row["current_mean"] is not None else None
    return rows


def test_the_streaming_check_is_identical_from_jsonl_and_from_parquet(store, profile, tmp_path, monkeypatch):
    monkeypatch.setattr(traffic_compact, "ROW_GROUP_ROWS", 64)  # several row groups per hour
    _hours(store)
    store.put_text(f"{HOUR}/bad.jsonl", '{"x":\n')
    shutil.copytree(store.root, tmp_path / "compacted")
    compacted = LocalStore(tmp_path / "compacted")
    assert len(compact(compacted, "lm", T0 + timedelta(hours=3))) == 3
    start, end = T0 + timedelta(minutes=20), T0 + timedelta(hours=2, minutes=40)
    jsonl = check_store_window(store, "lm", start, end, profile, toy_tokenize, CFG, tmp_path / "j")
    parquet = check_store_window(compacted, "lm", start, end, profile, toy_tokenize, CFG, tmp_path / "p")
    assert parquet.n_samples == jsonl.n_samples > 200 and parquet.verdict == jsonl.verdict
    assert _signals(parquet) == _signals(jsonl)  # counts, PSI, KL, JS and KS: the same records in the same order
    assert parquet.notes == jsonl.notes and jsonl.notes[0].endswith("served by other versions left out")


def _candidates(store, now) -> list[tuple]:
    units = resolve_source("traffic://", DataConfig(), store, model_name="lm", cache_dir=Path("unused"), now=now)
    return [(c.source, c.line, c.text, c.reason) for unit in units for c in unit.read()]


def test_traffic_ingest_reads_compacted_hours_with_the_same_locations(store):
    records = _hours(store, hours=2)
    del records[0]["prompt"]
    records[1]["prompt"] = 42
    store.put_text(f"{HOUR}/odd.jsonl", json.dumps(records[0]) + "\n{truncated\n" + json.dumps(records[1]) + "\n"
                   + json.dumps({**records[2], "ts": "yesterday"}) + "\n")
    now = T0 + timedelta(days=1)
    before = _candidates(store, now)
    compact(store, "lm", T0 + timedelta(hours=2), delete_jsonl=True)
    assert not any(k.endswith(".jsonl") and "/_" not in k for k in store.list("traffic/lm"))
    after = _candidates(store, now)
    assert sorted(after, key=repr) == sorted(before, key=repr) and len(after) == 244
    assert (store.uri_for(f"{HOUR}/odd.jsonl"), 2, None, "malformed_json") in after
    assert (store.uri_for(f"{HOUR}/odd.jsonl"), 4, records[2]["prompt"], None) in after  # a bad ts keeps its prompt


@pytest.fixture
def _cli_environment(monkeypatch):
    """main() setdefaults a few PREFECT_* variables; pre-set them here so they are undone after the test."""
    for key, value in {**quiet_prefect_env(), "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def test_the_compact_command(capsys, _cli_environment):
    store = open_store()
    _hours(store, hours=2)
    jsonl = _ids(read_window(store, "lm", T0, T0 + timedelta(hours=2)))
    assert main(["compact", "--model", "lm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lm: compacted 2 closed traffic hour(s)") and f"{HOUR}/_compacted-" in out
    assert main(["compact", "--model", "lm", "--delete-jsonl"]) == 0
    assert "compacted 0 closed traffic hour(s)" in capsys.readouterr().out
    assert window_files(store, "lm", T0, T0 + timedelta(hours=2))[0].endswith(".parquet")
    assert not [k for k in store.list("traffic/lm") if k.endswith(".jsonl") and "/_" not in k]
    assert _ids(read_window(store, "lm", T0, T0 + timedelta(hours=2))) == jsonl
    assert main(["compact", "--model", "../x"]) == 2
    assert "llmops compact: error: store key" in capsys.readouterr().err
    assert main(["compact", "--set", "monitor.compact_grace_minutes=0.01"]) == 2
    assert "must be longer than the server's flush interval" in capsys.readouterr().err
