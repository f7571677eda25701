"""Compaction of closed traffic hours: an hour's JSONL files into one Parquet file, its manifest committed last."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from llmops.infra.store import ArtifactNotFound, ArtifactStore
from llmops.infra.traffic import parquet as tp
from llmops.infra.traffic.log import (
    MANIFEST,
    Partition,
    as_utc,
    file_name,
    is_log_file,
    line_record,
    parse_ts,
    partition_hour,
    partition_prefix,
    read_partition,
    traffic_prefix,
)

log = logging.getLogger("llmops.traffic")

LOCK = "_compacting.lock"
LOCK_STALE = timedelta(minutes=15)  # compacting an hour takes seconds: a lock this old was left by a crash
DEFAULT_GRACE = timedelta(minutes=10)
ROW_GROUP_ROWS = 1 << 16  # rows per Parquet row group: what a reader holds at once
BLOCK_BYTES = 8 << 20  # JSONL handed to Arrow's parser at once (several server flushes)


def closed_before(now: datetime, grace: timedelta, flush_interval_s: float) -> datetime:
    """The cutoff of closed hours: an hour is closed once it ended before ``now - grace``.

    Raises:
        ValueError: ``grace`` is not longer than the server's flush interval, so a flush could still
            be writing into an hour called closed.
    """
    if grace.total_seconds() <= flush_interval_s:
        raise ValueError(f"the compaction grace period ({grace.total_seconds():g} s) must be longer than the server's "
                         f"flush interval ({flush_interval_s:g} s): set monitor.compact_grace_minutes higher")
    return as_utc(now, "now") - grace


def compact(store: ArtifactStore, model: str, before: datetime, *, since: Optional[datetime] = None,
            delete_jsonl: bool = False) -> list[str]:
    """Compact every closed hour of ``model`` (ended at or before ``before``) that has JSONL files not yet compacted.

    Args:
        store: The artifact store holding ``traffic/<model>/...``.
        model: Model name of the traffic.
        before: Cutoff of closed hours (see :func:`closed_before`).
        since: Only hours from this one on (default: every hour, found by listing the model's whole log).
        delete_jsonl: Delete an hour's JSONL files once its manifest is committed.

    Returns:
        The keys of the Parquet files written, oldest hour first.
    """
    before = as_utc(before, "before")
    if since is None:
        hours = sorted({partition_hour(key) for key in store.list(traffic_prefix(model)) if is_log_file(key)} - {None})
    else:
        hour, hours = _floor(as_utc(since, "since")), []
        while hour + timedelta(hours=1) <= before:
            hours.append(hour)
            hour += timedelta(hours=1)
    written = (compact_hour(store, model, hour, before=before, delete_jsonl=delete_jsonl) for hour in hours)
    return [key for key in written if key]


def compact_hour(store: ArtifactStore, model: str, hour: datetime, *, before: Optional[datetime] = None,
                 delete_jsonl: bool = False) -> Optional[str]:
    """Turn a closed hour's JSONL files into one Parquet file, then commit its manifest; idempotent.

    A recompaction (late flushes arrived) writes a new file: the previous Parquet's rows, then the
    new JSONL files, so readers see the same records in the same order before and after it.
    The files it replaces are deleted at the next compaction of the hour, not now, so a reader
    still reading them finishes. One compaction of an hour runs at a time (a lock file).

    Args:
        store: The artifact store.
        model: Model name of the traffic.
        hour: Any moment of the hour (aware).
        before: Cutoff of closed hours (default: now minus 10 minutes).
        delete_jsonl: Delete the JSONL files the committed manifest names (after the commit).

    Returns:
        The key of the Parquet file written; None when the hour is open, has no JSONL file that is
        not compacted yet, or another compaction holds it.
    """
    hour = _floor(as_utc(hour, "hour"))
    before = as_utc(before, "before") if before is not None else datetime.now(timezone.utc) - DEFAULT_GRACE
    if hour + timedelta(hours=1) > before:
        return None  # open: the server may still flush into it
    prefix = partition_prefix(model, hour)
    if not delete_jsonl and not read_partition(store, prefix).jsonl:
        return None  # nothing to do: no lock taken (a closed hour gets no new files meanwhile)
    with _locked(store, prefix) as held:
        if not held:
            log.info("%s: another compaction holds it, skipped", prefix)
            return None
        keys = store.list(prefix)
        part = read_partition(store, prefix, keys)
        written, manifest = _compact(store, part, keys) if part.jsonl else (None, part.manifest)
        if delete_jsonl and manifest:
            _delete_compacted(store, keys, set(manifest["sources"]))
    return written


def _floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


@contextmanager
def _locked(store: ArtifactStore, prefix: str) -> Iterator[bool]:
    """Hold the hour's lock (an exclusive create) while the body runs; yield False if another compaction holds it."""
    key, owner = f"{prefix}/{LOCK}", uuid.uuid4().hex
    body = json.dumps({"owner": owner, "at": datetime.now(timezone.utc).isoformat()}).encode()
    held = store.put_if_absent(key, body)
    if not held and _stale(store, key):
        store.delete(key)
        held = store.put_if_absent(key, body)
    try:
        yield held
    finally:
        if held and _owner(store, key) == owner:  # a crashed holder's lock may have been taken over
            store.delete(key)


def _owner(store: ArtifactStore, key: str) -> Optional[str]:
    try:
        return json.loads(store.get_bytes(key)).get("owner")
    except (ArtifactNotFound, ValueError, AttributeError):
        return None


def _stale(store: ArtifactStore, key: str) -> bool:
    try:
        at = datetime.fromisoformat(json.loads(store.get_bytes(key))["at"])
    except ArtifactNotFound:
        return True
    except (ValueError, KeyError, TypeError):
        return True  # unreadable: not a lock this code wrote
    return datetime.now(timezone.utc) - at > LOCK_STALE


def _compact(store: ArtifactStore, part: Partition, keys: list[str]) -> tuple[str, dict]:
    """Write the hour's new Parquet (and malformed-lines) file, commit the manifest, drop what the last one superseded.

    Returns the Parquet file's key and the committed manifest."""
    old = part.manifest or {}
    sources = sorted({*old.get("sources", ()), *map(file_name, part.jsonl)})
    digest = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]  # a retried crash overwrites its own files
    names = f"_compacted-{digest}.parquet", f"_malformed-{digest}.jsonl"
    with tempfile.TemporaryDirectory(prefix="llmops-compact-") as tmp:
        writer = _HourWriter(Path(tmp))
        if part.parquet:
            writer.copy(store, part)
        for block in _blocks(store, part.jsonl):
            writer.add_block(block)
        writer.close()
        sha = store.put_file(f"{part.prefix}/{names[0]}", writer.parquet_path)
        if writer.malformed:
            store.put_file(f"{part.prefix}/{names[1]}", writer.malformed_path)
    gone = set(old.get("superseded", ()))
    superseded = sorted(n for n in map(file_name, keys)
                        if n.startswith(("_compacted-", "_malformed-")) and n not in names and n not in gone)
    manifest = {"format": tp.FORMAT, "parquet": names[0], "sha256": sha, "records": writer.records,
                "malformed_file": names[1] if writer.malformed else None, "malformed_lines": writer.malformed,
                "sources": sources, "superseded": superseded, "compacted_at": datetime.now(timezone.utc).isoformat()}
    store.put_json(f"{part.prefix}/{MANIFEST}", manifest)  # the commit: readers switch to the new file here
    for name in gone:  # superseded one compaction ago: no reader can still be on them
        store.delete(f"{part.prefix}/{name}")
    log.info("compacted %s: %d records from %d JSONL file(s) (%d malformed line(s) kept) into %s", part.prefix,
             writer.records, len(part.jsonl), writer.malformed, names[0])
    return f"{part.prefix}/{names[0]}", manifest


def _delete_compacted(store: ArtifactStore, keys: list[str], held: set[str]) -> None:
    """Delete the JSONL files among ``keys`` that the committed manifest holds (``held``: its sources)."""
    for key in keys:
        if is_log_file(key) and file_name(key) in held:
            store.delete(key)


def _blocks(store: ArtifactStore, keys: tuple[str, ...]) -> Iterator[list[tuple[str, bytes]]]:
    """The JSONL files as (name, bytes), grouped into blocks of about BLOCK_BYTES."""
    block, size = [], 0
    for key in keys:
        data = store.get_bytes(key)
        block.append((file_name(key), data))
        size += len(data)
        if size >= BLOCK_BYTES:
            yield block
            block, size = [], 0
    if block:
        yield block


class _HourWriter:
    """Rows into one Parquet file in row groups of ROW_GROUP_ROWS; unreadable lines into a JSONL file beside it."""

    def __init__(self, folder: Path):
        self.parquet_path, self.malformed_path = folder / "hour.parquet", folder / "malformed.jsonl"
        self._parquet = pq.ParquetWriter(self.parquet_path, tp.SCHEMA, compression="zstd")
        self._bad = open(self.malformed_path, "wb")
        self._pending: list[pa.Table] = []
        self.records = self.malformed = 0

    def copy(self, store: ArtifactStore, part: Partition) -> None:
        """The hour as compacted so far: its Parquet rows and its kept malformed lines."""
        with tp.open_parquet(store, part.parquet) as parquet:
            for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
                self._add(pa.Table.from_batches([batch]).cast(tp.SCHEMA))
        if part.malformed:
            self._bad.write(store.get_bytes(part.malformed))
            self.malformed += part.manifest["malformed_lines"]

    def add_block(self, files: list[tuple[str, bytes]]) -> None:
        """Arrow for the whole block; else file by file; the row converter for a file Arrow refuses."""
        files = [(name, data if data.endswith(b"\n") else data + b"\n") for name, data in files if data]
        table = tp.arrow_columns(b"".join(data for _, data in files)) if files else None
        if table is not None:
            self._add(tp.with_source(table, [n for n, _ in files], [tp.line_count(d) for _, d in files]))
            return
        for name, data in files:
            table = tp.arrow_columns(data) if len(files) > 1 else None
            self._add(tp.with_source(table, [name], [tp.line_count(data)]) if table is not None
                      else self._rows(name, data))

    def _rows(self, name: str, data: bytes) -> pa.Table:
        """One file line by line: records with a parsable ``ts`` into columns, every other non-blank line kept."""
        records, stamps, lines = [], [], []
        for number, raw in enumerate(data.split(b"\n"), start=1):  # numbered as a file is read, at each \n
            if not raw.strip():
                continue
            record, reason = line_record(raw)
            if record is not None:
                try:
                    stamps.append(parse_ts(record.get("ts")))
                except ValueError as exc:
                    record, reason = None, f"bad ts: {exc}"
            if record is None:
                self._keep(name, number, reason, raw)
                continue
            records.append(record)
            lines.append(number)
        table = tp.record_columns(records, stamps)
        return table.append_column("source_file", pa.array([name] * len(lines), pa.string())).append_column(
            "source_line", pa.array(lines, tp.SCHEMA.field("source_line").type))

    def _keep(self, name: str, number: int, reason: str, raw: bytes) -> None:
        entry = {"file": name, "line": number, "reason": reason}
        try:
            entry["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(raw).decode("ascii")
        self._bad.write(json.dumps(entry).encode() + b"\n")
        self.malformed += 1

    def _add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self.records += table.num_rows
        while sum(t.num_rows for t in self._pending) >= ROW_GROUP_ROWS:
            rows = pa.concat_tables(self._pending)
            self._parquet.write_table(rows.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
            self._pending = [rows.slice(ROW_GROUP_ROWS)]

    def close(self) -> None:
        rows = pa.concat_tables(self._pending) if self._pending else None
        if rows is not None and rows.num_rows:
            self._parquet.write_table(rows, row_group_size=ROW_GROUP_ROWS)
        self._parquet.close()
        self._bad.close()
