"""A window as a map over its hour partitions and a merge: each partition accumulated on its own, in any process,
into a partial; the partials merged exactly, in any order.

No Prefect: the monitor flow maps :func:`accumulate_partition` over a cluster's workers, the single-process
check (:func:`llmops.monitoring.check.check_store_window`) calls it partition after partition. Both merge
with :func:`merge_partials`, so both give the same statistics.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from llmops.infra.config import MonitorConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import as_utc, partition_prefix, partition_records, read_partition, window_hours
from llmops.monitoring.accumulate import AccumulatorState, PromptSample, WindowAccumulator, sampling_keys
from llmops.monitoring.batch import Tokenize
from llmops.monitoring.records import ReferenceProfile
from llmops.monitoring.semantic import partition_prompts
from llmops.monitoring.stream import CHUNK_BYTES, WindowScan, stream_partition


class WindowPlan(BaseModel):
    """What a worker needs to accumulate a partition of a window, by name: the store, the profile's key, the
    window and the partitions; never records.

    Attributes:
        store_uri: The artifact store (workers open it with their own credentials).
        model: Model name of the traffic.
        version: Only records served by this version count.
        start: Window start (aware).
        end: Window end (aware, exclusive).
        window_id: The window's name (its folder under ``monitoring/<model>/``).
        partitions: Hour partition prefixes the window can have records in, in order.
        profile_key: Store key of the reference profile (JSON).
        sample_size: KS reservoir size per signal (``monitor.ks_window_sample``).
        prompt_sample: Prompts each partition samples for the domain classifier and the semantic signal
            (0: none; see :func:`prompt_sample_size`).
        chunk_bytes: JSONL bytes parsed at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_uri: str
    model: str
    version: int
    start: datetime
    end: datetime
    window_id: str
    partitions: list[str]
    profile_key: str
    sample_size: int = Field(ge=1)
    prompt_sample: int = Field(0, ge=0)
    chunk_bytes: int = Field(CHUNK_BYTES, ge=1)


def window_partition_prefixes(model: str, start: datetime, end: datetime) -> list[str]:
    """The prefixes of the hour partitions [start, end) can have records in (the hour before ``start`` included)."""
    start, end = as_utc(start, "start"), as_utc(end, "end")
    if end <= start:
        raise ValueError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    return [partition_prefix(model, hour) for hour in window_hours(start, end)]


def prompt_sample_size(profile: ReferenceProfile, cfg: MonitorConfig, semantic: bool) -> int:
    """Prompts a window samples: for the semantic signal and the domain classifier (one sample serves both: a
    prefix of a bottom-k sample in key order is a uniform sample too); 0 when neither reads prompts."""
    sizes = ([cfg.semantic_window_sample] if semantic else []) + (
        [cfg.classifier_window_sample] if cfg.domain_classifier and profile.texts else [])
    return max(sizes, default=0)


@dataclass
class PartitionPartial:
    """One hour partition accumulated: what the merge needs, a few MB at most (bins, reservoirs, prompt sample).

    Attributes:
        prefix: The partition (``traffic/<model>/<yyyy>/<mm>/<dd>/<hh>``).
        state: The accumulator's state (:meth:`WindowAccumulator.state`).
        scan: Files read, records kept and left out, malformed lines.
        prompts: The partition's prompt sample, or None when none was asked for.
    """

    prefix: str
    state: AccumulatorState
    scan: WindowScan
    prompts: Optional[PromptSample] = None


def accumulate_partition(store: ArtifactStore, prefix: str, start: datetime, end: datetime,
                         profile: ReferenceProfile, tokenize: Optional[Tokenize], *, version: int, sample_size: int,
                         prompt_sample: int = 0, chunk_bytes: int = CHUNK_BYTES) -> PartitionPartial:
    """Accumulate the records of ``version`` with ``start <= ts < end`` of the partition at ``prefix``.

    The partition is listed here (a compaction committed meanwhile is seen), then streamed as
    :func:`~llmops.monitoring.stream.stream_window` streams each partition; with ``prompt_sample``, its
    prompts are read in a second pass and sampled with the partition's keys.
    """
    part = read_partition(store, prefix)
    accumulator = WindowAccumulator(profile, sample_size)
    scan = stream_partition(store, part, start, end, accumulator, tokenize, version=version, chunk_bytes=chunk_bytes)
    prompts = None
    if prompt_sample:
        prompts = PromptSample(prompt_sample)
        texts = partition_prompts(store, part, start, end, version)
        prompts.add(texts, sampling_keys(partition=prefix).random(len(texts)))
    return PartitionPartial(prefix, accumulator.state(), scan, prompts)


@dataclass
class MergedWindow:
    """A window's partials merged: the accumulator to finish, the scan, the prompt sample (None: not sampled)."""

    accumulator: WindowAccumulator
    scan: WindowScan
    prompts: Optional[PromptSample]


def merge_partials(accumulator: WindowAccumulator, partials: Iterable[PartitionPartial],
                   prompt_sample: int = 0) -> MergedWindow:
    """Merge partitions' partials into ``accumulator`` (empty, of the partials' profile and sample size).

    Exact and independent of the order the partials come in: counts add, sums are exact, samples are
    the smallest keys of all; the scans are joined in partition order (files and the first malformed
    lines as one process reads them). ``partials`` may be a generator: one partial is held at a time.
    """
    scans: dict[str, WindowScan] = {}
    prompts = PromptSample(prompt_sample) if prompt_sample else None
    for partial in partials:
        if partial.prefix in scans:
            raise ValueError(f"partition {partial.prefix} was accumulated twice")
        accumulator.merge(partial.state)
        scans[partial.prefix] = partial.scan
        if prompts is not None and partial.prompts is not None:
            prompts.merge(partial.prompts)
    scan = WindowScan()
    for prefix in sorted(scans):  # zero-padded yyyy/mm/dd/hh: sorted is reading order
        scan.merge(scans[prefix])
    return MergedWindow(accumulator, scan, prompts)


def records_by_partition(store: ArtifactStore, model: str, start: datetime, end: datetime,
                         version: Optional[int] = None) -> dict[str, list[dict]]:
    """A stored window's records in memory, by partition (of ``version`` only when given): what
    :func:`llmops.monitoring.check.check_window` takes to give the streamed check's report exactly."""
    out = {}
    for prefix in window_partition_prefixes(model, start, end):
        records = partition_records(store, read_partition(store, prefix), as_utc(start, "start"),
                                    as_utc(end, "end"), [])
        out[prefix] = [r for r in records if version is None or r.get("version") == version]
    return out


def partitions_of(records: Sequence[dict] | Mapping[str, Sequence[dict]]) -> list[tuple[Optional[str], Sequence[dict]]]:
    """(partition, records) pairs of an in-memory window: a mapping is by partition, a sequence one unnamed one."""
    if isinstance(records, Mapping):
        return sorted(records.items())
    return [(None, records)]
