"""Traffic log I/O: hour partitions of JSONL (plus a compacted Parquet file once closed), read by window,
written atomically."""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import orjson

from llmops.infra.store import ArtifactStore
from llmops.infra.traffic import parquet as traffic_parquet
from llmops.infra.traffic.record import TrafficRecord

log = logging.getLogger("llmops.traffic")

MANIFEST = "_compacted.json"  # in a compacted hour: names its Parquet file and every JSONL file that file holds


class TrafficWindow(list):
    """The records of a window (a plain list of dicts) plus what could not be read.

    Attributes:
        malformed: ``"<key>:<line>: <reason>"`` for each line that was skipped.
        files: Store keys that were read.
    """

    def __init__(self, records: Iterable[dict] = (), malformed: Optional[list[str]] = None,
                 files: Optional[list[str]] = None):
        super().__init__(records)
        self.malformed = malformed or []
        self.files = files or []


def as_utc(moment: datetime, what: str) -> datetime:
    """``moment`` in UTC; a clear error naming ``what`` for a naive datetime (traffic is partitioned in UTC)."""
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (got naive {moment.isoformat()}); "
                         "traffic is partitioned in UTC")
    return moment.astimezone(timezone.utc)


def parse_ts(value: object) -> datetime:
    """A record's ``ts`` as an aware UTC datetime (naive timestamps are taken as UTC)."""
    if not isinstance(value, str):
        raise ValueError(f"ts must be an ISO-8601 string, got {value!r}")
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def traffic_prefix(model: str) -> str:
    """``traffic/<model>``: every hour partition of the model's log is under it."""
    return f"traffic/{model}"


def outcomes_prefix(model: str) -> str:
    """Where servers write each version's answered and failed request counts (one JSON object per process)."""
    return f"serving/{model}/outcomes/"


def partition_prefix(model: str, hour: datetime) -> str:
    """``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>`` of the UTC hour containing ``hour``."""
    return f"{traffic_prefix(model)}/{hour.astimezone(timezone.utc):%Y/%m/%d/%H}"


def partition_hour(key: str) -> Optional[datetime]:
    """The UTC hour of a key under ``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>/``; None for any other key."""
    try:
        return datetime(*map(int, key.split("/")[2:6]), tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def window_hours(start: datetime, end: datetime) -> list[datetime]:
    """The hour partitions a window [start, end) can have records in.

    Includes the hour before ``start``: a file is named by the hour its first record was flushed,
    so a file begun at 13:59 may hold records of 14:00.
    """
    hour = as_utc(start, "start").replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    last = as_utc(end, "end")
    hours = []
    while hour < last:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


class MalformedLog:
    """Malformed lines of a streamed window: all counted, the first ``keep`` kept as examples (bounded memory)."""

    def __init__(self, keep: int = 20):
        self.keep = keep
        self.count = 0
        self.examples: list[str] = []

    def append(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)


def parse_json_line(line: str | bytes) -> Any:
    """One JSON value: orjson (fast), else the standard library, which also takes NaN/Infinity as
    ``json.dumps`` writes them; raises ``json.JSONDecodeError`` with the standard library's message."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def line_record(line: str | bytes) -> tuple[Optional[dict], Optional[str]]:
    """One JSONL line as (record, None), or (None, why not) in the words every reader logs."""
    try:
        record = parse_json_line(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({getattr(exc, 'msg', exc)})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, None


def iter_jsonl(lines: Iterable[str | bytes], source: str, malformed: list[str] | MalformedLog,
               first_line: int = 1) -> Iterator[tuple[int, dict]]:
    """Parse JSONL lines into (line number, record); append ``"<source>:<line>: <reason>"`` to ``malformed``."""
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        record, reason = line_record(line)
        if reason is not None:
            malformed.append(f"{source}:{number}: {reason}")
            continue
        yield number, record


def _lines(store: ArtifactStore, key: str) -> Iterator[bytes]:
    path = store.local_path(key)
    if path is not None:
        with open(path, "rb") as f:  # stream a local file line by line
            yield from f
    else:
        yield from store.get_bytes(key).splitlines()


def iter_chunks(store: ArtifactStore, key: str, chunk_bytes: int = 8 << 20) -> Iterator[tuple[int, bytes]]:
    """A JSONL file in pieces of about ``chunk_bytes`` cut after a newline: (number of its first line, bytes).

    A local file is read piece by piece, so memory is bounded by ``chunk_bytes`` whatever the file
    size; a remote one is fetched whole (one partition file) and then cut.
    """
    path = store.local_path(key)
    if path is not None:
        with open(path, "rb") as f:
            yield from _cut(iter(lambda: f.read(chunk_bytes), b""))
    else:
        data = store.get_bytes(key)
        yield from _cut(data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes))


def _cut(pieces: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    line, carry = 1, b""
    for piece in pieces:
        data = carry + piece
        end = data.rfind(b"\n") + 1
        if end == 0:  # no newline yet: one line longer than a piece
            carry = data
            continue
        yield line, data[:end]
        line += data.count(b"\n", 0, end)
        carry = data[end:]
    if carry:
        yield line, carry


@dataclass(frozen=True)
class Partition:
    """One hour partition as readers take it: the compacted Parquet file, if any, and the JSONL files it does not hold.

    Attributes:
        prefix: ``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>``.
        jsonl: JSONL keys to read as JSONL, sorted: every file before compaction, late flushes after it.
        parquet: Key of the Parquet file the committed manifest names, or None.
        malformed: Key of the lines compaction could not read (kept with file, line and reason), or None.
        manifest: The committed manifest, or None.
    """

    prefix: str
    jsonl: tuple[str, ...]
    parquet: Optional[str] = None
    malformed: Optional[str] = None
    manifest: Optional[dict] = None


def file_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def is_log_file(key: str) -> bool:
    """A JSONL file the server flushed (compaction's own files start with ``_``)."""
    name = file_name(key)
    return name.endswith(".jsonl") and not name.startswith(("_", "."))


def read_partition(store: ArtifactStore, prefix: str, keys: Optional[list[str]] = None) -> Partition:
    """The partition at ``prefix``; ``keys`` is its listing when the caller already has it.

    Only what the committed manifest names counts as compacted: a Parquet file written by a
    compaction that crashed before its manifest is ignored, and its JSONL files are read instead.
    """
    keys = store.list(prefix) if keys is None else keys
    manifest_key = f"{prefix}/{MANIFEST}"
    manifest = store.get_json(manifest_key) if manifest_key in keys else None
    held = set(manifest["sources"]) if manifest else set()
    jsonl = tuple(k for k in keys if is_log_file(k) and file_name(k) not in held)
    if manifest is None:
        return Partition(prefix, jsonl)
    bad = manifest.get("malformed_file")
    return Partition(prefix, jsonl, f"{prefix}/{manifest['parquet']}", f"{prefix}/{bad}" if bad else None, manifest)


def window_partitions(store: ArtifactStore, model: str, start: datetime, end: datetime) -> Iterator[Partition]:
    """The hour partitions a window [start, end) can have records in, in order.

    Each is listed when the iteration reaches it, so a compaction committed meanwhile is seen.
    """
    start, end = as_utc(start, "start"), as_utc(end, "end")
    if end <= start:
        raise ValueError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    return (read_partition(store, partition_prefix(model, hour)) for hour in window_hours(start, end))


def window_files(store: ArtifactStore, model: str, start: datetime, end: datetime) -> list[str]:
    """The files holding a window's records, in reading order: per hour, its Parquet file, then the JSONL it
    does not hold."""
    return [key for part in window_partitions(store, model, start, end)
            for key in ((part.parquet,) if part.parquet else ()) + part.jsonl]


def malformed_lines(store: ArtifactStore, part: Partition) -> Iterator[tuple[str, dict]]:
    """What compaction kept of the lines it could not read: ``("<jsonl key>:<line>", entry)``, in file order.

    An entry has ``file``, ``line``, ``reason`` and the line itself (``raw``, or ``raw_base64`` when not UTF-8).
    """
    if part.malformed is None:
        return
    for line in store.get_bytes(part.malformed).splitlines():
        entry = json.loads(line)
        yield f"{part.prefix}/{entry['file']}:{entry['line']}", entry


def read_window(store: ArtifactStore, model: str, start: datetime, end: datetime) -> TrafficWindow:
    """Records of ``model`` with ``start <= ts < end``, from only the hour partitions the window touches.

    Malformed lines (not JSON, not an object, no parsable ``ts``) are skipped, counted in
    ``.malformed`` with file and line, and logged; they never fail the read. A compacted hour is
    read from its Parquet file (records as written, see ``traffic_parquet.table_records``), its
    malformed lines from what compaction kept of them, then its late JSONL files. The whole window
    is held in memory: monitoring streams instead (``llmops.monitoring.check.check_store_window``).
    """
    start, end = as_utc(start, "start"), as_utc(end, "end")
    window = TrafficWindow()
    for part in window_partitions(store, model, start, end):
        window.files.extend(((part.parquet,) if part.parquet else ()) + part.jsonl)
        window.extend(partition_records(store, part, start, end, window.malformed))
    if window.malformed:
        log.warning("traffic window %s to %s: skipped %d malformed line(s), first: %s",
                    start.isoformat(), end.isoformat(), len(window.malformed), window.malformed[0])
    return window


def partition_records(store: ArtifactStore, part: Partition, start: datetime, end: datetime,
                      malformed: list[str]) -> Iterator[dict]:
    """One partition's records with ``start <= ts < end`` (aware bounds): its compacted Parquet file,
    then the lines compaction could not read (into ``malformed``), then its JSONL files."""
    if part.parquet:
        yield from traffic_parquet.read_records(store, part.parquet, start, end)
        malformed.extend(f"{where}: {entry['reason']}" for where, entry in malformed_lines(store, part))
    for key in part.jsonl:
        yield from (record for _, record in in_window(_lines(store, key), key, start, end, malformed))


def in_window(lines: Iterable[str | bytes], source: str, start: datetime, end: datetime,
              malformed: list[str] | MalformedLog, first_line: int = 1) -> Iterator[tuple[int, dict]]:
    """The (line number, record) of JSONL ``lines`` with ``start <= ts < end``; lines that are not JSON
    objects or have no parsable ``ts`` go to ``malformed`` as ``"<source>:<line>: <reason>"``."""
    for number, record in iter_jsonl(lines, source, malformed, first_line):
        try:
            ts = parse_ts(record.get("ts"))
        except ValueError as exc:
            malformed.append(f"{source}:{number}: bad ts: {exc}")
            continue
        if start <= ts < end:
            yield number, record


def write_records(store: ArtifactStore, model: str, records: Sequence[TrafficRecord | dict], *,
                  flushed_at: Optional[datetime] = None) -> str:
    """Write records as one JSONL partition file atomically; return its key.

    A :class:`TrafficRecord` is written as :meth:`TrafficRecord.json_line`; a dict (a record of
    another producer, a test's odd record) as the standard library writes it, which is the same line
    for the same values. The file goes in the hour partition of ``flushed_at`` (default: the first
    record's ``ts``), as the server names a file by the hour its first record was flushed.
    """
    if not records:
        raise ValueError("write_records needs at least one record")
    first = records[0]
    moment = flushed_at or (first.ts if isinstance(first, TrafficRecord) else parse_ts(first.get("ts")))
    key = f"{partition_prefix(model, as_utc(moment, 'flushed_at'))}/{uuid.uuid4().hex}.jsonl"
    body = "".join((r.json_line() if isinstance(r, TrafficRecord) else json.dumps(r, ensure_ascii=False)) + "\n"
                   for r in records)
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
