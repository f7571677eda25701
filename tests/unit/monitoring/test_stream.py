"""Streaming window checks: same results as in memory, bounded state, only the window's partitions, bad lines."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from llmops.infra.config import MonitorConfig
from llmops.infra.store import LocalStore
from llmops.infra.traffic.compaction import compact
from llmops.infra.traffic.log import iter_chunks, read_window, write_records
from llmops.monitoring.accumulate import Reservoir, WindowAccumulator, sampling_keys
from llmops.monitoring.check import check_store_window, check_window, load_report
from llmops.monitoring.partition import records_by_partition
from llmops.monitoring.profile import build_profile
from llmops.monitoring.signals import rows_batch
from llmops.monitoring.stats import ks_test
from llmops.monitoring.synthetic import TrafficShape, synthetic_records, toy_tokenize

T0 = datetime(2026, 11, 23, 14, tzinfo=timezone.utc)
CFG = MonitorConfig(evidently_report=False)


class ReadCountingStore(LocalStore):
    """A local store that remembers which keys were opened."""

    def __init__(self, root):
        super().__init__(root)
        self.opened: list[str] = []

    def local_path(self, key):
        self.opened.append(key)
        return super().local_path(key)


@pytest.fixture(scope="module")
def profile():
    return build_profile(synthetic_records(1000, seed=1), toy_tokenize, CFG, model_name="lm", model_version=1)


def _traffic(store, hours: int = 3, per_hour: int = 150, shape: TrafficShape = TrafficShape()) -> None:
    for h in range(hours):
        batch = synthetic_records(per_hour, shape, seed=50 + h, start=T0 + timedelta(hours=h), spacing_s=20)
        for r in batch[::10]:
            r["version"] = 2  # served by another version: left out, counted
        write_records(store, "lm", batch[:100])
        write_records(store, "lm", batch[100:])


def _signals(report) -> dict:
    """Every statistic of every signal; means rounded (running sums add in a different order per chunk)."""
    rows = {name: s.model_dump() for name, s in report.signals.items()}
    for row in rows.values():
        row["current_mean"] = round(row["current_mean"], 9) if row["current_mean"] is not None else None
    return rows


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 4096])  # whole files, and many chunks per file
def test_streaming_equals_the_in_memory_check_of_the_same_records(profile, tmp_path, chunk_bytes):
    store = LocalStore(tmp_path / "store")
    _traffic(store, shape=TrafficShape(words_mean=26))
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(hours=2, minutes=30)
    streamed = check_store_window(store, "lm", start, end, profile, toy_tokenize, CFG, tmp_path / "s",
                                  chunk_bytes=chunk_bytes)
    window = records_by_partition(store, "lm", start, end, version=1)  # sampling keys are drawn per partition
    assert [r for records in window.values() for r in records] == [
        r for r in read_window(store, "lm", start, end) if r["version"] == 1]
    in_memory = check_window(profile, window, toy_tokenize, CFG, tmp_path / "m", start=start, end=end)
    assert streamed.n_samples == sum(map(len, window.values())) == 270
    assert streamed.verdict == in_memory.verdict == "alert"
    assert _signals(streamed) == _signals(in_memory)  # counts, PSI, KL, JS and KS (same reservoir keys): exactly
    assert streamed.classifier.model_dump(exclude={"seconds"}) == in_memory.classifier.model_dump(exclude={"seconds"})
    assert streamed.notes == ["30 record(s) served by other versions left out"]
    assert load_report((tmp_path / "s" / "drift.json").read_text()) == streamed


def test_records_needing_fallbacks_or_with_bad_fields_take_the_row_path_with_the_same_result(profile, tmp_path):
    store = LocalStore(tmp_path / "store")
    records = synthetic_records(300, seed=7, start=T0, spacing_s=1)
    for r in records[::7]:
        del r["features"]["prompt_chars"]  # fallback to len(prompt): a null for Arrow, handled by the row parser
    for r in records[::11]:
        del r["prompt_token_ids"]  # fallback to the tokenizer
    records[5]["features"]["prompt_surprisal"] = float("nan")  # json.dumps writes NaN; orjson refuses it
    write_records(store, "lm", records)
    key = store.list("traffic/lm")[0]
    good = store.get_bytes(key)
    lines = good.splitlines(keepends=True)
    bad = json.loads(lines[3])
    bad["features"]["prompt_tokens"] = "31"  # a field of the wrong type: that line is malformed, the others count
    store.put_bytes(key, b"".join([*lines[:3], json.dumps(bad).encode() + b"\n", b"{truncated\n", *lines[4:]]))
    streamed = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, toy_tokenize, CFG, tmp_path / "s")
    kept = [r for i, r in enumerate(records) if i != 3]
    in_memory = check_window(profile, kept, toy_tokenize, CFG, tmp_path / "m")
    assert streamed.n_samples == 299 and _signals(streamed) == _signals(in_memory)
    assert streamed.notes == [f"2 malformed traffic line(s), first: {key}:4: record {bad['id']}: "
                              "features.prompt_tokens must be a number, got '31'"]
    store.put_bytes(key, good)  # the clean file takes Arrow's fast path for most records: still the same result
    fast = check_store_window(store, "lm", T0, T0 + timedelta(hours=1), profile, toy_tokenize, CFG, tmp_path / "f")
    assert _signals(fast) == _signals(check_window(profile, records, toy_tokenize, CFG, tmp_path / "m2"))


def test_only_the_partitions_the_window_touches_are_read(profile, tmp_path):
    store = ReadCountingStore(tmp_path / "store")
    _traffic(store, hours=5)  # 14:00 .. 18:59
    check_store_window(store, "lm", T0 + timedelta(hours=2), T0 + timedelta(hours=3), profile, None, CFG,
                       tmp_path / "o")
    hours = {key.split("/")[5] for key in store.opened if key.startswith("traffic/")}
    assert hours == {"15", "16"}  # the window's hour and the one before it (a file flushed at 15:59)


def test_accumulated_state_does_not_grow_with_the_window(profile):
    acc, keys = WindowAccumulator(profile, sample_size=300), sampling_keys()
    sizes = []
    for seed in range(4):
        records = synthetic_records(500, seed=seed)
        acc.add(rows_batch(records, None, keys=keys.random(len(records))))
        sizes.append(acc.state_nbytes())
    assert acc.n_records == 2000 and sizes[1] == sizes[2] == sizes[3] < 100_000
    summary = acc.summaries()["prompt_chars"]
    assert summary.n == 2000 and summary.sample.size == 300 and summary.counts.sum() == 2000


def test_the_reservoir_is_uniform_and_independent_of_batching():
    values, keys = np.arange(10_000, dtype=float), sampling_keys(3).random(10_000)
    whole, pieces = Reservoir(500), Reservoir(500)
    whole.add(values, keys)
    for i in range(0, 10_000, 777):
        pieces.add(values[i:i + 777], keys[i:i + 777])
    assert np.array_equal(np.sort(whole.values), np.sort(pieces.values))
    assert abs(np.mean(whole.values) - 4999.5) < 3 * 2887 / np.sqrt(500)


def test_ks_on_the_window_sample_stays_within_its_documented_tolerance():
    # docs/monitoring.md: with a window sample of m values, D moves by at most ~1.36/sqrt(m) (95%, DKW),
    # and the p-value keeps its power because the effective size 1/(1/n_ref + 1/m) is set by the reference.
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    for shift in (0.0, 0.05, 0.2):
        window = rng.normal(shift, size=200_000)
        sample = Reservoir(20_000)
        sample.add(window, sampling_keys().random(window.size))
        full, sampled = ks_test(reference, window), ks_test(reference, sample.values)
        assert abs(full.statistic - sampled.statistic) <= 1.36 / np.sqrt(20_000)
        assert (full.p_value < 0.01) == (sampled.p_value < 0.01)


def test_chunks_end_on_line_boundaries_and_carry_line_numbers(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("traffic/x.jsonl", b"".join(b'{"n": %d}\n' % i for i in range(1, 101)))
    chunks = list(iter_chunks(store, "traffic/x.jsonl", chunk_bytes=64))
    assert len(chunks) > 10 and all(data.endswith(b"\n") for _, data in chunks)
    numbers = [first + i for first, data in chunks for i, _ in enumerate(data.splitlines())]
    lines = [json.loads(line)["n"] for _, data in chunks for line in data.splitlines()]
    assert numbers == lines == list(range(1, 101))


def test_the_classifier_reads_the_same_prompt_sample_from_jsonl_parquet_and_memory(profile, tmp_path):
    store = LocalStore(tmp_path / "store")
    _traffic(store, shape=TrafficShape(vocab_offset=1000))
    cfg = MonitorConfig(evidently_report=False, classifier_window_sample=100)
    start, end = T0, T0 + timedelta(hours=3)
    window = records_by_partition(store, "lm", start, end, version=1)
    in_memory = check_window(profile, window, toy_tokenize, cfg, tmp_path / "m", start=start, end=end)
    from_jsonl = check_store_window(store, "lm", start, end, profile, toy_tokenize, cfg, tmp_path / "j")
    compact(store, "lm", before=end + timedelta(hours=1))
    from_parquet = check_store_window(store, "lm", start, end, profile, toy_tokenize, cfg, tmp_path / "p")
    dumps = [r.classifier.model_dump(exclude={"seconds"}) for r in (in_memory, from_jsonl, from_parquet)]
    assert dumps[0] == dumps[1] == dumps[2] and in_memory.classifier.status == "alert"
    assert in_memory.classifier.n_current == 100
    assert "domain_classifier: 100 of 405 prompts read (uniform sample, monitor.classifier_window_sample)" in \
        from_parquet.notes
