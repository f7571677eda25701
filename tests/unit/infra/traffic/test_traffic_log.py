"""Traffic windows: hour partitions touched (plus the previous hour), ts filtering, malformed lines, atomic writes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from llmops.infra.store import LocalStore
from llmops.infra.traffic.log import partition_prefix, read_jsonl_file, read_window, window_hours, write_records
from llmops.monitoring.synthetic import synthetic_records

T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)


class CountingStore(LocalStore):
    """A local store that remembers which prefixes were listed."""

    def __init__(self, root):
        super().__init__(root)
        self.listed: list[str] = []

    def list(self, prefix: str = "") -> list[str]:
        self.listed.append(prefix)
        return super().list(prefix)


@pytest.fixture
def store(tmp_path):
    return CountingStore(tmp_path / "store")


def _write_hourly(store, hours: int, per_hour: int = 10) -> list[dict]:
    records = []
    for h in range(hours):
        batch = synthetic_records(per_hour, seed=h, start=T0 + timedelta(hours=h), spacing_s=60)
        write_records(store, "lm", batch)
        records += batch
    return records


def test_read_window_returns_records_in_range_from_the_touched_partitions(store):
    records = _write_hourly(store, hours=4)  # 14:00 .. 17:09
    window = read_window(store, "lm", T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    assert [r["id"] for r in window] == [r["id"] for r in records[10:30]]
    assert store.listed == [partition_prefix("lm", T0 + timedelta(hours=h)) for h in (0, 1, 2)]
    assert not window.malformed and len(window.files) == 3


def test_a_file_flushed_in_the_previous_hour_is_read(store):
    late = synthetic_records(5, start=T0 - timedelta(minutes=1), spacing_s=30)  # 13:59:00 .. 14:01:00
    key = write_records(store, "lm", late)
    assert key.startswith("traffic/lm/2026/11/23/13/") and key.endswith(".jsonl")
    window = read_window(store, "lm", T0, T0 + timedelta(hours=1))
    assert [r["id"] for r in window] == [r["id"] for r in late[2:]]


def test_malformed_lines_are_counted_with_file_and_line_not_fatal(store):
    good = synthetic_records(3, start=T0 + timedelta(minutes=5))
    no_ts = {**good[0], "ts": None}
    key = "traffic/lm/2026/11/23/14/broken.jsonl"
    lines = [good[0], "{truncated", good[1], "[1, 2]", no_ts, good[2]]
    import json

    store.put_text(key, "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    store.put_text("traffic/lm/2026/11/23/14/notes.txt", "ignored")
    window = read_window(store, "lm", T0, T0 + timedelta(hours=1))
    assert [r["id"] for r in window] == [r["id"] for r in good]
    assert window.malformed[0].startswith(f"{key}:2: not JSON")
    assert window.malformed[1] == f"{key}:4: not a JSON object"
    assert window.malformed[2] == f"{key}:5: bad ts: ts must be an ISO-8601 string, got None"
    assert window.files == [key]


def test_window_helpers_and_bad_arguments(store, tmp_path):
    assert window_hours(T0 + timedelta(minutes=30), T0 + timedelta(hours=1)) == [T0 - timedelta(hours=1), T0]
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        read_window(store, "lm", datetime(2026, 11, 23, 14), T0)
    with pytest.raises(ValueError, match="empty window: end .* is not after start"):
        read_window(store, "lm", T0, T0)
    with pytest.raises(ValueError, match="write_records needs at least one record"):
        write_records(store, "lm", [])
    with pytest.raises(FileNotFoundError, match="no traffic file at"):
        read_jsonl_file(tmp_path / "nope.jsonl")


def test_write_records_is_one_atomic_jsonl_file(store):
    records = synthetic_records(4, start=T0)
    key = write_records(store, "lm", records)
    assert store.list("traffic/lm") == [key]  # no temporary file left behind
    local = store.local_path(key)
    assert [line for line in local.read_text().splitlines()] and read_jsonl_file(local) == records
