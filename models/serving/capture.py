"""Traffic capture buffer: served requests' records held in memory, bounded, flushed to the store's traffic log."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import write_records
from llmops.infra.traffic.record import TrafficRecord

log = logging.getLogger("llmops.serving")


class TrafficBuffer:
    """Records waiting to be written, flushed as one JSONL object per flush (``write_records`` of
    ``llmops.infra.traffic.log``, which writes each as :meth:`TrafficRecord.json_line`).

    Thread-safe. A failed write puts the records back (so the next flush retries them); beyond
    ``limit`` records the oldest are dropped and counted, so a store outage cannot exhaust memory.
    """

    def __init__(self, store: ArtifactStore, model: str, limit: int):
        self.store, self.model, self.limit = store, model, limit
        self._records: deque[TrafficRecord] = deque()
        self._lock = threading.Lock()  # guards _records and the counters
        self._flush_lock = threading.Lock()  # one flush at a time keeps the records in order
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: Sequence[TrafficRecord]) -> int:
        """Append records (validated when they were made); return how many are buffered now."""
        with self._lock:
            self._records.extend(records)
            self._trim()
            return len(self._records)

    def _trim(self) -> None:
        excess = len(self._records) - self.limit
        if excess > 0:
            for _ in range(excess):
                self._records.popleft()
            self.dropped += excess
            log.warning("traffic buffer full (%d records): dropped the %d oldest", self.limit, excess)

    def flush(self) -> int:
        """Write everything buffered as one object; return how many records were written.

        Raises:
            Exception: Whatever the store raised; the records stay buffered for the next flush.
        """
        with self._flush_lock:
            with self._lock:
                batch = list(self._records)
                self._records.clear()
            if not batch:
                return 0
            try:
                key = write_records(self.store, self.model, batch)
            except Exception:
                with self._lock:
                    self._records.extendleft(reversed(batch))  # back in front: they are the oldest
                    self._trim()
                    self.failed_flushes += 1
                raise
            with self._lock:
                self.written += len(batch)
            log.info("wrote %d traffic records to %s", len(batch), self.store.uri_for(key))
            return len(batch)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"buffered": len(self._records), "written": self.written, "dropped": self.dropped,
                    "failed_flushes": self.failed_flushes}
