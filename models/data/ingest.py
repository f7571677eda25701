"""The ingest stage: read sources, validate and quarantine, dedupe, split by hash, write an immutable snapshot."""
from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from llmops.infra.config import DataConfig
from llmops.infra.store import ArtifactStore
from llmops.models.data.formats import Candidate, IngestError
from llmops.models.data.snapshot import SPLITS, Kept, load_ref, read_split, write_snapshot
from llmops.models.data.sources import Unit, resolve_source
from llmops.models.records import DatasetRef

__all__ = ["IngestError", "REASONS", "assign_splits", "check_text", "ingest", "load_ref", "read_split"]

logger = logging.getLogger("llmops.ingest")

REASONS = ("invalid_utf8", "binary", "empty", "too_short", "too_long",
           "malformed_json", "missing_field", "not_text", "duplicate", "redaction_dropped")
# Control characters other than tab, newline and carriage return mark binary data.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def ingest(cfg: DataConfig, store: ArtifactStore, *, model_name: str, cache_dir: Path) -> DatasetRef:
    """Read ``cfg.sources``, quarantine what is unusable, dedupe, split and snapshot.

    Args:
        cfg: Sources, validation bounds and split fractions.
        store: Where the snapshot is written (and where ``traffic://`` reads).
        model_name: Whose traffic a bare ``traffic://`` source means.
        cache_dir: Local scratch: downloaded S3 objects, built-in corpora, Parquet before upload.

    Raises:
        IngestError: A source is missing or malformed, or fewer than 3 usable records remain.
    """
    # Resolve every source before reading any, so a typo fails in milliseconds, not after a long read.
    plan = {spec: resolve_source(spec, cfg, store, model_name=model_name, cache_dir=cache_dir)
            for spec in cfg.sources}
    kept, quarantine, per_source = _collect(plan, cfg)
    rejected = dict(sorted(Counter(entry["reason"] for entry in quarantine).items()))
    if len(kept) < 3:
        raise IngestError(f"sources {list(cfg.sources)} yield {len(kept)} usable record(s), at least 3 are needed; "
                          f"rejected per reason: {rejected or 'none'}")
    splits = assign_splits(kept, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    stats = {"rejected": rejected, "duplicates": rejected.get("duplicate", 0), "per_source": per_source}
    ref = write_snapshot(store, cfg, splits, quarantine, stats, Path(cache_dir) / "tmp")
    if rejected:
        logger.warning("quarantined %d record(s) %s: see %s", sum(rejected.values()), rejected, ref.quarantine_uri)
    logger.info("dataset %s: %s records, %d rejected %s -> %s", ref.name,
                {name: s.records for name, s in ref.splits.items()}, sum(rejected.values()), rejected, ref.uri)
    return ref


@dataclass
class _Tally:
    """What reading has produced so far: kept records, quarantine entries, counts per source."""

    kept: list[Kept] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    first_seen: dict[str, Kept] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def admit(self, spec: str, candidate: Candidate, cfg: DataConfig) -> None:
        """Keep ``candidate`` or quarantine it with its reason; the first of equal texts wins."""
        self.counts[spec]["read"] += 1
        problem = _problem(candidate, cfg)
        if problem is None:
            record = Kept(candidate.text.strip(), candidate.source, candidate.line)
            original = self.first_seen.setdefault(record.text, record)
            if original is record:
                self.kept.append(record)
                self.counts[spec]["accepted"] += 1
                return
            problem = ("duplicate", f"same text as {original.source}:{original.line}")
        self.quarantine.append(_quarantine_entry(candidate, *problem))
        self.counts[spec][problem[0]] += 1


def _collect(plan: dict[str, list[Unit]], cfg: DataConfig) -> tuple[list[Kept], list[dict[str, Any]], dict[str, Any]]:
    """Read every unit (at most ``max_records_per_source`` per source), validate and dedupe."""
    tally = _Tally()
    cap = cfg.max_records_per_source
    units = [(spec, unit) for spec, spec_units in plan.items() for unit in spec_units]
    for spec, unit in tqdm(units, desc="ingest", unit="file", disable=None):
        left = None if cap is None else cap - tally.counts[spec]["read"]
        if left == 0:  # this source's cap is spent: do not even open the rest of its files
            continue
        for candidate in islice(unit.read(), left):
            tally.admit(spec, candidate, cfg)
    per_source = {spec: _source_stats(tally.counts[spec]) for spec in plan}
    for spec, stats in per_source.items():
        logger.info("source %s: %s", spec, stats)
    return tally.kept, tally.quarantine, per_source


def _source_stats(counts: Counter) -> dict[str, Any]:
    rejected = {reason: counts[reason] for reason in REASONS if counts[reason]}
    return {"read": counts["read"], "accepted": counts["accepted"], "rejected": rejected}


def _problem(candidate: Candidate, cfg: DataConfig) -> Optional[tuple[str, str]]:
    if candidate.text is None:
        return candidate.reason or "unreadable", candidate.detail
    return check_text(candidate.text, cfg.min_chars, cfg.max_chars)


def check_text(text: str, min_chars: int, max_chars: int) -> Optional[tuple[str, str]]:
    """``(reason, detail)`` when ``text`` is not usable training text, else None."""
    stripped = text.strip()
    if not stripped:
        return "empty", "only whitespace"
    control = _CONTROL.search(stripped)
    if control:
        return "binary", f"control character {control.group()!r} at offset {control.start()}"
    if len(stripped) < min_chars:
        return "too_short", f"{len(stripped)} characters after stripping, min_chars is {min_chars}"
    if len(stripped) > max_chars:
        return "too_long", f"{len(stripped)} characters, max_chars is {max_chars}"
    return None


def _quarantine_entry(candidate: Candidate, reason: str, detail: str) -> dict[str, Any]:
    preview = candidate.preview if candidate.text is None else candidate.text[:200]
    return {
        "reason": reason, "source": candidate.source, "line": candidate.line, "detail": detail,
        "message": f"{candidate.source}:{candidate.line}: {reason}: {detail}", "preview": preview,
    }


def split_hash(text: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the text and seed alone, so a record never changes split."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(records: list[Kept], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Kept]]:
    """Assign each record by its hash: test below ``test_fraction``, validation below test+val, else train.

    With 3 or more records no split stays empty: an empty one takes the record with the smallest
    hash from the largest split (train on ties).
    """
    hashes = [split_hash(r.text, seed) for r in records]
    members: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index, h in enumerate(hashes):
        name = "test" if h < test_fraction else "validation" if h < test_fraction + val_fraction else "train"
        members[name].append(index)
    if len(records) >= 3:
        for name in ("test", "validation", "train"):
            if not members[name]:
                donor = max(SPLITS, key=lambda s: (len(members[s]), s == "train"))
                moved = min(members[donor], key=lambda i: hashes[i])
                members[donor].remove(moved)
                members[name].append(moved)
    return {name: [records[i] for i in sorted(members[name])] for name in SPLITS}
