"""Traffic log I/O: hour-partitioned JSONL under traffic/<model>/yyyy/mm/dd/hh/, read by window, written atomically."""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator, Optional

from infra.store import ArtifactStore

log = logging.getLogger("llmops.traffic")


class TrafficWindow(list):
    """The records of a window (a plain list of dicts) plus what could not be read.

    Attributes:
        malformed: ``"<key>:<line>: <reason>"`` for each line that was skipped.
        files: Store keys that were read.
    """

    def __init__(self, records: Iterable[dict] = (), malformed: Optional[list[str]] = None, files: Optional[list[str]] = None):
        super().__init__(records)
        self.malformed = malformed or []
        self.files = files or []


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (got naive {moment.isoformat()}); traffic is partitioned in UTC")
    return moment.astimezone(timezone.utc)


def parse_ts(value: object) -> datetime:
    """A record's ``ts`` as an aware UTC datetime (naive timestamps are taken as UTC)."""
    if not isinstance(value, str):
        raise ValueError(f"ts must be an ISO-8601 string, got {value!r}")
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def partition_prefix(model: str, hour: datetime) -> str:
    """``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>`` of the UTC hour containing ``hour``."""
    return f"traffic/{model}/{hour.astimezone(timezone.utc):%Y/%m/%d/%H}"


def window_hours(start: datetime, end: datetime) -> list[datetime]:
    """The hour partitions a window [start, end) can have records in.

    Includes the hour before ``start``: a file is named by the hour its first record was flushed,
    so a file begun at 13:59 may hold records of 14:00.
    """
    hour = _utc(start, "start").replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    last = _utc(end, "end")
    hours = []
    while hour < last:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def window_id(start: datetime, end: datetime) -> str:
    """A store-safe id of a window, e.g. ``20261123T1400Z-20261123T1500Z``."""
    return f"{_utc(start, 'start'):%Y%m%dT%H%MZ}-{_utc(end, 'end'):%Y%m%dT%H%MZ}"


def iter_jsonl(lines: Iterable[str | bytes], source: str, malformed: list[str]) -> Iterator[tuple[int, dict]]:
    """Parse JSONL lines into (line number, record); append ``"<source>:<line>: <reason>"`` to ``malformed``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            malformed.append(f"{source}:{number}: not JSON ({getattr(exc, 'msg', exc)})")
            continue
        if not isinstance(record, dict):
            malformed.append(f"{source}:{number}: not a JSON object")
            continue
        yield number, record


def _lines(store: ArtifactStore, key: str) -> Iterator[bytes]:
    path = store.local_path(key)
    if path is not None:
        with open(path, "rb") as f:  # stream a local file line by line
            yield from f
    else:
        yield from store.get_bytes(key).splitlines()


def read_window(store: ArtifactStore, model: str, start: datetime, end: datetime) -> TrafficWindow:
    """Records of ``model`` with ``start <= ts < end``, from only the hour partitions the window touches.

    Malformed lines (not JSON, not an object, no parsable ``ts``) are skipped, counted in
    ``.malformed`` with file and line, and logged; they never fail the read.
    """
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    window = TrafficWindow()
    for hour in window_hours(start, end):
        for key in store.list(partition_prefix(model, hour)):
            if not key.endswith(".jsonl"):
                continue
            window.files.append(key)
            for number, record in iter_jsonl(_lines(store, key), key, window.malformed):
                try:
                    ts = parse_ts(record.get("ts"))
                except ValueError as exc:
                    window.malformed.append(f"{key}:{number}: bad ts: {exc}")
                    continue
                if start <= ts < end:
                    window.append(record)
    if window.malformed:
        log.warning("traffic window %s: skipped %d malformed line(s), first: %s",
                    window_id(start, end), len(window.malformed), window.malformed[0])
    return window


def write_records(store: ArtifactStore, model: str, records: list[dict], *, flushed_at: Optional[datetime] = None) -> str:
    """Write records as one JSONL partition file atomically; return its key.

    The file goes in the hour partition of ``flushed_at`` (default: the first record's ``ts``),
    as the server names a file by the hour its first record was flushed.
    """
    if not records:
        raise ValueError("write_records needs at least one record")
    moment = flushed_at or parse_ts(records[0].get("ts"))
    key = f"{partition_prefix(model, _utc(moment, 'flushed_at'))}/{uuid.uuid4().hex}.jsonl"
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    store.put_bytes(key, body.encode("utf-8"))
    return key


def read_jsonl_file(path: str | Path) -> TrafficWindow:
    """Every record of a local JSONL file (for ``llmops monitor --current FILE``); bad lines reported."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no traffic file at {path}")
    window = TrafficWindow(files=[str(path)])
    with open(path, "rb") as f:
        window.extend(record for _, record in iter_jsonl(f, str(path), window.malformed))
    return window
