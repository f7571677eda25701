"""Streaming a stored traffic window into an accumulator: Parquet row groups and JSONL chunks, bounded memory."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

import numpy as np
import pyarrow as pa

from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import MalformedLog, Partition, in_window, iter_chunks, malformed_lines, window_partitions
from llmops.infra.traffic.parquet import open_parquet, table_records
from llmops.monitoring import columnar
from llmops.monitoring.accumulate import WindowAccumulator, sampling_keys
from llmops.monitoring.batch import Tokenize
from llmops.monitoring.signals import RecordError, record_id, record_row, rows_batch

# bytes parsed at once: bounds memory whatever the size of a partition file (measured: as fast as 32 MB)
CHUNK_BYTES = 8 << 20
FullRows = Callable[[np.ndarray], list[tuple[str, int, dict]]]  # row indices -> (location, line, record) of each


@dataclass
class WindowScan:
    """What streaming a window read, kept and left out.

    Attributes:
        files: Partition files read (compacted Parquet and JSONL).
        records: Records accumulated (in the window, of the profiled version, well formed).
        other_versions: Records in the window served by another model version, left out.
        malformed: Lines left out: not JSON, not an object, no ISO ``ts``, or a field of the wrong type.
        fast_chunks: JSONL chunks parsed by Arrow.
        row_chunks: JSONL chunks Arrow could not take as they were, parsed line by line.
        row_groups: Parquet row groups read.
        parse_s: Seconds spent in Arrow's JSON parser, or reading Parquet row groups.
    """

    files: list[str] = field(default_factory=list)
    records: int = 0
    other_versions: int = 0
    malformed: MalformedLog = field(default_factory=MalformedLog)
    fast_chunks: int = 0
    row_chunks: int = 0
    row_groups: int = 0
    parse_s: float = 0.0

    def notes(self) -> list[str]:
        notes = [f"{self.other_versions} record(s) served by other versions left out"] if self.other_versions else []
        if self.malformed.count:
            notes.append(f"{self.malformed.count} malformed traffic line(s), first: {self.malformed.examples[0]}")
        return notes

    def merge(self, other: WindowScan) -> None:
        """Add the scan of the partitions that come after this one's (files and examples stay in reading order)."""
        self.files += other.files
        self.records += other.records
        self.other_versions += other.other_versions
        self.malformed.count += other.malformed.count
        self.malformed.examples = (self.malformed.examples + other.malformed.examples)[:self.malformed.keep]
        self.fast_chunks += other.fast_chunks
        self.row_chunks += other.row_chunks
        self.row_groups += other.row_groups
        self.parse_s += other.parse_s


class _Stream:
    """One window's scan: the filters, the key generator of the partition being read and the accumulator, fed
    chunk by chunk."""

    def __init__(self, accumulator: WindowAccumulator, tokenize: Optional[Tokenize], start: datetime, end: datetime,
                 version: int):
        self.accumulator, self.tokenize, self.version = accumulator, tokenize, version
        self.start, self.end = start, end
        self.bounds = columnar.micros(start), columnar.micros(end)
        self.keys: Optional[np.random.Generator] = None  # the partition's: set by partition()
        self.scan = WindowScan()

    def partition(self, store: ArtifactStore, part: Partition, chunk_bytes: int) -> None:
        """Accumulate one hour partition: its compacted Parquet file, then its JSONL files, keys drawn from the
        partition's own generator (see :func:`sampling_keys`)."""
        self.keys = sampling_keys(partition=part.prefix)
        if part.parquet:
            self.scan.files.append(part.parquet)
            self.parquet(store, part)
        for key in part.jsonl:
            self.scan.files.append(key)
            for first_line, data in iter_chunks(store, key, chunk_bytes):
                self.chunk(key, first_line, data)

    def chunk(self, key: str, first_line: int, data: bytes) -> None:
        """Accumulate one chunk: Arrow's fast path, or the row parser when Arrow refuses it."""
        t0 = time.perf_counter()
        table = columnar.read_table(data)
        self.scan.parse_s += time.perf_counter() - t0
        if table is not None and self._fast(table):
            self.scan.fast_chunks += 1
        else:
            self._rows(key, first_line, data)
            self.scan.row_chunks += 1

    def _fast(self, table) -> bool:
        """Accumulate an Arrow-parsed chunk; False (nothing accumulated) when it needs the row parser."""
        ts = columnar.timestamps(table)
        if ts is None:
            return False
        in_window = (ts >= self.bounds[0]) & (ts < self.bounds[1])
        kept = in_window & (columnar.versions(table) == self.version)
        table = table if kept.all() else table.filter(kept)
        slow = columnar.needs_rows(table)
        errors: list = []
        slow_batch = rows_batch(table.filter(slow).to_pylist(), self.tokenize, errors=errors) if slow.any() else None
        fast_batch = None if slow.all() else columnar.table_batch(table.filter(~slow) if slow.any() else table)
        if errors or (fast_batch is None and not slow.all()):
            return False  # the row parser reports the bad lines with their numbers
        keys = self.keys.random(table.num_rows)  # drawn only now: a refused chunk must not consume keys
        for batch, rows in ((fast_batch, ~slow), (slow_batch, slow)):
            if batch is not None:
                batch.keys = keys[rows]
                self.accumulator.add(batch)
        self.scan.records += table.num_rows
        self.scan.other_versions += int(in_window.sum() - kept.sum())
        return True

    def parquet(self, store: ArtifactStore, part: Partition) -> None:
        """Accumulate a compacted hour row group by row group, then count the lines compaction could not read."""
        with open_parquet(store, part.parquet) as parquet:
            for i in range(parquet.num_row_groups):
                t0 = time.perf_counter()
                columns = columnar.parquet_columns(parquet.metadata.row_group(i))
                table = columnar.parquet_table(parquet.read_row_group(i, columns=columns))
                self.scan.parse_s += time.perf_counter() - t0
                self._group(table, _full_rows(parquet, i, part.prefix))
                self.scan.row_groups += 1
        for where, entry in malformed_lines(store, part):
            self.scan.malformed.append(f"{where}: {entry['reason']}")

    def _group(self, table: pa.Table, full: FullRows) -> None:
        """One row group: typed rows straight into a Batch; rows needing a fallback, or with fields kept in
        ``extra``, rebuilt as records and judged as the row path judges them. Keys are drawn for the
        accumulated rows in row order, as the JSONL paths draw them."""
        ts = columnar.timestamps(table)
        in_window = (ts >= self.bounds[0]) & (ts < self.bounds[1])
        irregular = in_window & np.asarray(table.column("extra").is_valid())
        regular = in_window & ~irregular
        kept = regular & (columnar.versions(table) == self.version)
        self.scan.other_versions += int(regular.sum() - kept.sum())
        slow = np.zeros(table.num_rows, bool)
        if kept.any():  # a filter copies every column: skipped when it would keep them all
            slow[kept] = columnar.needs_rows(table if kept.all() else table.filter(kept))
        by_record = np.flatnonzero(slow | irregular)
        accepted = {row: record
                    for row, record in zip(by_record, self._judge(full(by_record) if by_record.size else []))
                    if record is not None}
        fast = kept & ~slow
        taken = fast.copy()
        taken[list(accepted)] = True
        keys = np.zeros(table.num_rows)
        keys[taken] = self.keys.random(int(taken.sum()))
        if fast.any():
            batch = columnar.table_batch(table if fast.all() else table.filter(fast))
            if batch is None:
                raise ValueError("a compacted file holds a negative token id: it was not written by "
                                 "llmops.infra.traffic.compaction")
            batch.keys = keys[fast]
            self.accumulator.add(batch)
        if accepted:
            rows = sorted(accepted)
            self.accumulator.add(rows_batch([accepted[r] for r in rows], self.tokenize, keys=keys[rows]))
        self.scan.records += int(taken.sum())

    def _judge(self, located: list[tuple[str, int, dict]]) -> list[Optional[dict]]:
        """Each rebuilt record, or None when another version served it or a field is malformed (logged)."""
        out: list[Optional[dict]] = []
        for where, line, record in located:
            if record.get("version") != self.version:
                self.scan.other_versions += 1  # only rows whose version is kept in `extra` get here with another one
                out.append(None)
                continue
            try:
                record_row(record, record_id(record, line))
            except RecordError as exc:
                self.scan.malformed.append(f"{where}: {exc}")
                out.append(None)
                continue
            out.append(record)
        return out

    def _rows(self, key: str, first_line: int, data: bytes) -> None:
        """The row path: every line parsed and validated on its own, bad ones logged with their number, in order."""
        records = []
        for number, record in in_window(data.splitlines(), key, self.start, self.end, self.scan.malformed, first_line):
            if record.get("version") != self.version:
                self.scan.other_versions += 1
                continue
            try:
                record_row(record, record_id(record, number))
            except RecordError as exc:
                self.scan.malformed.append(f"{key}:{number}: {exc}")
                continue
            records.append(record)
        batch = rows_batch(records, self.tokenize, keys=self.keys.random(len(records)))
        self.accumulator.add(batch)
        self.scan.records += batch.n


def stream_window(store: ArtifactStore, model: str, start: datetime, end: datetime, accumulator: WindowAccumulator,
                  tokenize: Optional[Tokenize], *, version: int, chunk_bytes: int = CHUNK_BYTES) -> WindowScan:
    """Feed every record of ``model``/``version`` with ``start <= ts < end`` into ``accumulator``, file by file.

    Only the hour partitions the window touches are listed and read (as :func:`llmops.infra.traffic.log.read_window`),
    in the same order, so the same records reach the accumulator in the same order as an in-memory check of the
    window's records by partition.
    A compacted hour is read from its Parquet file (only the columns the signals need, one row group
    at a time), then its JSONL files that came after the compaction.
    """
    stream = _Stream(accumulator, tokenize, start, end, version)
    for part in window_partitions(store, model, start, end):
        stream.partition(store, part, chunk_bytes)
    return stream.scan


def stream_partition(store: ArtifactStore, part: Partition, start: datetime, end: datetime,
                     accumulator: WindowAccumulator, tokenize: Optional[Tokenize], *, version: int,
                     chunk_bytes: int = CHUNK_BYTES) -> WindowScan:
    """Feed one hour partition's records of ``version`` with ``start <= ts < end`` into ``accumulator``: what
    :func:`stream_window` does for each partition of a window, with the same sampling keys."""
    stream = _Stream(accumulator, tokenize, start, end, version)
    stream.partition(store, part, chunk_bytes)
    return stream.scan


def _full_rows(parquet, group: int, prefix: str) -> FullRows:
    """Rows of a row group as whole records with their JSONL location (read only if some row needs it)."""
    def full(rows: np.ndarray) -> list[tuple[str, int, dict]]:
        table = parquet.read_row_group(group).take(pa.array(rows))
        files, lines = table.column("source_file").to_pylist(), table.column("source_line").to_pylist()
        return [(f"{prefix}/{f}:{n}", n, r) for f, n, r in zip(files, lines, table_records(table))]
    return full


