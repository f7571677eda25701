"""A window as a map over its hour partitions and a merge: partials merge exactly, in any order, into what one
process accumulates; the config names where the map runs."""
from __future__ import annotations

import itertools
import math
import pickle
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pydantic import ValidationError

from llmops.infra.config import MonitorConfig
from llmops.infra.config.monitoring import ClusterSpec, parse_cluster
from llmops.infra.store import LocalStore
from llmops.infra.traffic.compaction import compact
from llmops.infra.traffic.log import write_records
from llmops.monitoring.accumulate import ExactSum, WindowAccumulator
from llmops.monitoring.check import check_store_window, finish_merged
from llmops.monitoring.partition import (
    accumulate_partition,
    merge_partials,
    prompt_sample_size,
    window_partition_prefixes,
)
from llmops.monitoring.profile import build_profile
from llmops.monitoring.stream import stream_window
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)
START, END = T0 + timedelta(minutes=20), T0 + timedelta(hours=3, minutes=40)
# samples smaller than the window: which values and prompts are kept depends on the keys
CFG = MonitorConfig(evidently_report=False, ks_window_sample=150, classifier_window_sample=100)


@pytest.fixture(scope="module")
def profile():
    return build_profile(synthetic_records(1000, seed=1), toy_tokenize, CFG, model_name="lm", model_version=1)


@pytest.fixture
def store(tmp_path):
    """Four hours of traffic, the first two compacted, with records needing the tokenizer, another version's
    records and malformed lines (so the scans have notes to merge)."""
    store = LocalStore(tmp_path / "store")
    for h in range(4):
        records = synthetic_records(160, TrafficShape(words_mean=30), seed=20 + h, start=T0 + timedelta(hours=h),
                                    spacing_s=22)
        for r in records[::7]:
            del r["prompt_token_ids"]
        for r in records[::11]:
            r["version"] = 2
        write_records(store, "lm", records[:90])
        key = write_records(store, "lm", records[90:])
        store.put_bytes(key.replace(".jsonl", "-bad.jsonl"), b"{not json\n")
    compact(store, "lm", before=T0 + timedelta(hours=2))
    return store


def partials_of(store, profile, size=None):
    size = prompt_sample_size(profile, CFG, semantic=False) if size is None else size
    return [accumulate_partition(store, prefix, START, END, profile, toy_tokenize, version=1,
                                 sample_size=CFG.ks_window_sample, prompt_sample=size, chunk_bytes=4096)
            for prefix in window_partition_prefixes("lm", START, END)]


def exactly(accumulator: WindowAccumulator) -> dict:
    """Every summary, bit for bit (means as their float's hex)."""
    return {name: (s.counts.tolist(), s.n, s.missing, None if s.mean is None else s.mean.hex(),
                   None if s.sample is None else s.sample.tobytes())
            for name, s in accumulator.summaries().items()} | {"records": accumulator.n_records}


def test_merging_partials_in_any_order_gives_one_process_accumulation_bit_for_bit(store, profile):
    partials = partials_of(store, profile)
    assert len(partials) == 5 and sum(p.state.n_records for p in partials) > 400  # 13:00 (empty) .. 17:00
    one_pass = WindowAccumulator(profile, CFG.ks_window_sample)
    stream_window(store, "lm", START, END, one_pass, toy_tokenize, version=1, chunk_bytes=4096)
    assert exactly(one_pass)["prompt_chars"][4] is not None
    results = set()
    for order in itertools.permutations(partials):
        merged = merge_partials(WindowAccumulator(profile, CFG.ks_window_sample), order, 100)
        scan = merged.scan
        results.add((repr(exactly(merged.accumulator)), tuple(scan.files), scan.records, scan.other_versions,
                     scan.malformed.count, tuple(scan.malformed.examples), tuple(merged.prompts.prompts()),
                     merged.prompts.seen))
    assert len(results) == 1, "the merge order changed something"
    (accumulated, files, records, _, malformed, examples, prompts, seen), = results
    assert accumulated == repr(exactly(one_pass)) and records == one_pass.n_records
    summary = one_pass.summaries()["prompt_chars"]
    assert summary.sample.size == CFG.ks_window_sample < summary.n, "the KS sample kept a subset"
    assert len(prompts) == 100 < seen == records
    assert list(files) == sorted(files) and malformed == len(examples) == 4


def test_a_merged_window_gives_the_single_process_report(store, profile, tmp_path):
    one_process = check_store_window(store, "lm", START, END, profile, toy_tokenize, CFG, tmp_path / "one",
                                     chunk_bytes=4096)  # the chunks the partials were read in: the same batch sums
    shuffled = partials_of(store, profile)
    random.Random(3).shuffle(shuffled)
    shuffled = [pickle.loads(pickle.dumps(p)) for p in shuffled]  # as they come back from a worker process
    merged = merge_partials(WindowAccumulator(profile, CFG.ks_window_sample), shuffled, 100)
    report = finish_merged(profile, merged, CFG, tmp_path / "merged", has_tokenizer=True,
                           window_id=one_process.window_id, start=START, end=END)
    assert report.model_dump(exclude={"created_at", "out_dir", "classifier"}) == one_process.model_dump(
        exclude={"created_at", "out_dir", "classifier"})
    assert report.classifier.model_dump(exclude={"seconds"}) == one_process.classifier.model_dump(exclude={"seconds"})
    left_out = sum(p.scan.other_versions for p in shuffled)
    assert report.notes[0] == f"{left_out} record(s) served by other versions left out"
    assert report.notes[1].startswith("4 malformed traffic line(s), first: traffic/lm/2026/11/23/14/")
    assert report.notes[2] == f"domain_classifier: 100 of {one_process.n_samples} prompts read (uniform sample, " \
                              "monitor.classifier_window_sample)"


def test_partials_of_another_profile_or_a_partition_twice_are_refused(store, profile):
    partials = partials_of(store, profile, size=0)
    other = build_profile(synthetic_records(300, seed=4), None, CFG, model_name="lm", model_version=1)
    with pytest.raises(ValueError, match="same reference profile"):
        merge_partials(WindowAccumulator(other, CFG.ks_window_sample), partials)
    with pytest.raises(ValueError, match="accumulated twice"):
        merge_partials(WindowAccumulator(profile, CFG.ks_window_sample), [partials[1], partials[1]])


def test_an_exact_sum_does_not_depend_on_the_order_of_its_terms():
    rng = np.random.default_rng(0)
    terms = [*map(float, rng.normal(size=200) * 10.0 ** rng.integers(-8, 17, size=200)), 1.0, 1e16, -1e16]
    running, exact = set(), set()
    for seed in range(20):
        order = list(terms)
        random.Random(seed).shuffle(order)
        halves = ExactSum(order[:100]), ExactSum(order[100:])
        halves[1].merge(halves[0])
        running.add(sum(order))
        exact |= {ExactSum(order).value, halves[1].value}
    assert len(running) > 1, "a running float sum depends on the order"
    assert exact == {math.fsum(terms)}


@pytest.mark.parametrize("value, spec", [
    ("local", ClusterSpec("local")),
    ("dask-local:2", ClusterSpec("dask-local", workers=2)),
    ("tcp://scheduler.internal:8786", ClusterSpec("dask", address="tcp://scheduler.internal:8786")),
    ("tls://10.0.0.5:8786", ClusterSpec("dask", address="tls://10.0.0.5:8786")),
])
def test_monitor_cluster_names_where_the_partitions_are_read(value, spec):
    assert parse_cluster(value) == spec and MonitorConfig(cluster=value).cluster == value


@pytest.mark.parametrize("value", ["dask-local:0", "dask-local", "dask", "scheduler:8786", "tcp://scheduler",
                                   "ray://head:10001", "Local"])
def test_an_unknown_cluster_setting_is_refused_naming_the_shapes_it_takes(value):
    with pytest.raises(ValidationError, match="monitor.cluster must be 'local' .* 'dask-local:N' .* tcp://"):
        MonitorConfig(cluster=value)
