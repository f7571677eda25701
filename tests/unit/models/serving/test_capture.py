"""The capture spool: a record is on disk before add returns, a killed server's records are shipped by the next
start, an outage keeps them, a full spool refuses instead of dropping."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from llmops.infra.store import LocalStore, StoreError
from llmops.infra.traffic.record import TrafficRecord
from llmops.models.serving.capture import CURRENT, CaptureFull, TrafficBuffer
from llmops.monitoring.synthetic import synthetic_records

T0 = datetime(2026, 12, 7, 10, tzinfo=timezone.utc)


class FlakyStore(LocalStore):
    failing = False

    def put_bytes(self, key, data):
        if self.failing:
            raise StoreError("simulated outage")
        return super().put_bytes(key, data)


def records(n: int, seed: int = 0) -> list[TrafficRecord]:
    return [TrafficRecord.model_validate_json(json.dumps(r)) for r in synthetic_records(n, seed=seed, start=T0)]


def stored_ids(store: LocalStore) -> list[str]:
    return [json.loads(line)["id"] for key in store.list("traffic/lm")
            for line in store.get_bytes(key).decode().splitlines()]


def test_a_record_is_spooled_before_add_returns_and_a_killed_servers_records_are_shipped_by_the_next(tmp_path):
    store, batch = LocalStore(tmp_path / "store"), records(5)
    first = TrafficBuffer(store, "lm", limit=100, spool=tmp_path / "spool")
    assert first.add(batch[:3]) == 3 and first.add(batch[3:]) == 5
    spooled = (first.folder / CURRENT).read_text().splitlines()
    assert spooled == [r.json_line() for r in batch]  # on disk, in order, before any flush
    first.close()  # as kill -9 leaves it: nothing shipped, the slot released
    with open(first.folder / CURRENT, "ab") as torn:
        torn.write(b'{"id": "cut sho')  # a line the killed process was writing, never acknowledged
    second = TrafficBuffer(store, "lm", limit=100, spool=tmp_path / "spool")
    assert second.folder == first.folder and second.stats()["recovered"] == 5
    assert second.flush() == 5 and stored_ids(store) == [r.id for r in batch]
    assert second.on_disk() == 0 and not list(second.folder.glob("shipping-*"))


def test_an_outage_keeps_every_record_spooled_and_ships_each_once(tmp_path):
    store = FlakyStore(tmp_path / "store")
    buffer = TrafficBuffer(store, "lm", limit=100, spool=tmp_path / "spool")
    batch = records(6)
    buffer.add(batch[:2])
    store.failing = True
    with pytest.raises(StoreError):
        buffer.flush()
    buffer.add(batch[2:4])
    with pytest.raises(StoreError):
        buffer.flush()
    assert len(buffer) == 4 and buffer.stats()["failed_flushes"] == 2 and buffer.on_disk() > 0
    store.failing = False
    buffer.add(batch[4:])
    assert buffer.flush() == 6 and stored_ids(store) == [r.id for r in batch]
    assert buffer.on_disk() == 0 and buffer.flush() == 0


def test_a_full_spool_refuses_and_counts_instead_of_dropping(tmp_path):
    store = FlakyStore(tmp_path / "store")
    store.failing = True
    batch = records(4)
    three = sum(len(r.json_line().encode()) + 1 for r in batch[:3])
    buffer = TrafficBuffer(store, "lm", limit=100, spool=tmp_path / "spool", spool_bytes=three + 10)
    buffer.add(batch[:3])
    with pytest.raises(CaptureFull, match="traffic capture is full"):
        buffer.add(batch[3:])
    assert len(buffer) == 3 and buffer.stats()["refused"] == 1
    small = TrafficBuffer(store, "lm", limit=2, spool=tmp_path / "other")
    with pytest.raises(CaptureFull):
        small.add(batch[:3])


def test_two_live_servers_on_one_cache_take_their_own_slots(tmp_path):
    store = LocalStore(tmp_path / "store")
    a = TrafficBuffer(store, "lm", limit=10, spool=tmp_path / "spool")
    b = TrafficBuffer(store, "lm", limit=10, spool=tmp_path / "spool")
    assert a.folder != b.folder and {a.folder.name, b.folder.name} == {"0", "1"}
