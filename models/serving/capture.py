"""Traffic capture: served requests' records made durable in a local write-ahead spool before their response is
sent, held in memory, and shipped to the store's traffic log in the background.

A buffer in memory alone loses what it holds when the server is killed (``kill -9`` after 100 acknowledged
responses left 99 in the log). Here every record is appended to ``<spool>/current.jsonl`` and fsynced before
:meth:`TrafficBuffer.add` returns, so an acknowledged response has its record on disk. A flush renames the
current file aside (``shipping-<ns>.jsonl``), writes the records to the store, and deletes the renamed files only
once the store has them; a new buffer on the same spool (the next start) ships whatever an earlier process left.
Delivery is at least once: a crash between the store write and the deletion ships those records again, with
the same request ids. Beyond ``limit`` records or ``spool_bytes`` on disk (a store outage) ``add`` refuses with
:class:`CaptureFull`, and the server answers 503 rather than drop a record silently.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import write_records
from llmops.infra.traffic.record import TrafficRecord

log = logging.getLogger("llmops.serving")

CURRENT = "current.jsonl"


class CaptureFull(RuntimeError):
    """The spool is at its limit (the store has not taken records for a while): the request is refused."""


def claim_spool(root: Path) -> tuple[Path, BinaryIO]:
    """The first slot folder ``root/<n>`` no live process holds, and its lock (held while the file stays open).

    A restarted server takes slot 0 again and finds what the killed one left; two servers on one cache folder
    get two slots instead of interleaving one file."""
    for slot in range(64):
        folder = root / str(slot)
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "ab")  # noqa: SIM115 - held open for the buffer's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return folder, lock
    raise RuntimeError(f"64 processes already hold capture spools under {root}")


class TrafficBuffer:
    """Records spooled to disk and waiting to be written to the store, flushed as one JSONL object per flush
    (``write_records`` of ``llmops.infra.traffic.log``, each record as :meth:`TrafficRecord.json_line`).

    Thread-safe. A failed write keeps the records (in memory and in the spool) for the next flush.

    Args:
        store: Where the traffic log lives.
        model: Model name of the traffic.
        limit: Most records held before :meth:`add` refuses.
        spool: The spool root (a slot folder under it is claimed, see :func:`claim_spool`).
        spool_bytes: Most bytes on disk before :meth:`add` refuses.
    """

    def __init__(self, store: ArtifactStore, model: str, limit: int, spool: Path, spool_bytes: int = 256 << 20):
        self.store, self.model, self.limit, self.spool_bytes = store, model, limit, spool_bytes
        self.folder, self._lock_file = claim_spool(Path(spool))
        self._records: deque[TrafficRecord] = deque()
        self._lock = threading.Lock()  # guards _records, the spool file and the counters
        self._flush_lock = threading.Lock()  # one flush at a time keeps the records in order
        self.written = self.refused = self.failed_flushes = self.recovered = 0
        self._pending: list[Path] = []  # renamed spool files whose records are not in the store yet
        self._recover()
        self._file = open(self.folder / CURRENT, "ab")  # noqa: SIM115 - appended to for the buffer's life

    def _recover(self) -> None:
        """Take back what an earlier process spooled and did not ship: its files become pending, their records
        buffered. A torn last line (killed mid-append, never acknowledged) is skipped."""
        current = self.folder / CURRENT
        if current.exists() and current.stat().st_size:
            current.replace(self.folder / f"shipping-{time.time_ns()}.jsonl")
        for path in sorted(self.folder.glob("shipping-*.jsonl")):
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                try:
                    self._records.append(TrafficRecord.model_validate_json(line))
                except ValidationError:
                    log.warning("capture spool %s:%d: not a record (a write cut short), skipped", path, number)
            self._pending.append(path)
        self.recovered = len(self._records)
        if self.recovered:
            log.info("capture spool %s: %d record(s) of an earlier process to ship", self.folder, self.recovered)

    def __len__(self) -> int:
        return len(self._records)

    def on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.jsonl"))

    def add(self, records: Sequence[TrafficRecord]) -> int:
        """Append records (validated when they were made) to the spool, fsynced, and to the buffer; return how
        many are buffered now.

        Raises:
            CaptureFull: The buffer or the spool is at its limit; nothing was added.
        """
        data = "".join(r.json_line() + "\n" for r in records).encode("utf-8")
        with self._lock:
            if len(self._records) + len(records) > self.limit or self.on_disk() + len(data) > self.spool_bytes:
                self.refused += len(records)
                raise CaptureFull(f"traffic capture is full ({len(self._records)} records, {self.on_disk():,} bytes "
                                  f"spooled): the store has not taken records since they were spooled")
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._records.extend(records)
            return len(self._records)

    def flush(self) -> int:
        """Write everything buffered as one object; return how many records were written.

        Raises:
            Exception: Whatever the store raised; the records stay buffered and spooled for the next flush.
        """
        with self._flush_lock:
            with self._lock:
                batch = list(self._records)
                self._records.clear()
                if batch:  # new records go to a fresh file while these are shipped
                    self._file.close()
                    shipping = self.folder / f"shipping-{time.time_ns()}.jsonl"
                    (self.folder / CURRENT).replace(shipping)
                    self._pending.append(shipping)
                    self._file = open(self.folder / CURRENT, "ab")  # noqa: SIM115
                shipped = list(self._pending)
            if not batch:
                return 0
            try:
                key = write_records(self.store, self.model, batch)
            except Exception:
                with self._lock:
                    self._records.extendleft(reversed(batch))  # back in front: they are the oldest
                    self.failed_flushes += 1
                raise
            with self._lock:
                self.written += len(batch)
                for path in shipped:
                    path.unlink(missing_ok=True)
                    self._pending.remove(path)
            log.info("wrote %d traffic records to %s", len(batch), self.store.uri_for(key))
            return len(batch)

    def close(self) -> None:
        """Close the spool file and release the slot (what is still spooled is shipped by the next start)."""
        with self._lock:
            self._file.close()
            self._lock_file.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"buffered": len(self._records), "written": self.written, "refused": self.refused,
                    "failed_flushes": self.failed_flushes, "recovered": self.recovered,
                    "spooled_bytes": self.on_disk()}
