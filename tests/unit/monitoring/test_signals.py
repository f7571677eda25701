"""Signal extraction from traffic records: values, fallbacks, missing features, malformed records."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from llmops.infra.traffic.record import TrafficFeatures
from llmops.monitoring.signals import FEATURES, OPTIONAL_SIGNALS, SIGNALS, RecordError, extract
from llmops.monitoring.synthetic import synthetic_records, toy_tokenize


@pytest.fixture
def records():
    return synthetic_records(5, seed=0)


def test_registry_documents_every_signal():
    continuous = {"prompt_chars", "prompt_tokens", "bytes_per_token", "rare_token_share", "prompt_surprisal",
                  "completion_tokens", "completion_logprob", "completion_entropy", "latency_ms", "semantic_distance"}
    assert {n for n, s in SIGNALS.items() if s.kind == "continuous"} == continuous
    assert {n for n, s in SIGNALS.items() if s.kind == "categorical"} == {"stop_reason", "token_frequency"}
    assert all(s.catches and s.computed for s in SIGNALS.values())


def test_the_per_record_features_are_the_records_numeric_features_in_a_fixed_order():
    # the order is the column order of a Batch and of the fast path: it must not move with the record model
    assert FEATURES == ["prompt_chars", "prompt_tokens", "bytes_per_token", "prompt_surprisal", "completion_tokens",
                        "completion_logprob", "completion_entropy", "latency_ms"]
    assert set(TrafficFeatures.model_fields) == {*FEATURES, "stop_reason"}
    assert all(SIGNALS[name].kind == "continuous" for name in FEATURES)


def test_extract_reads_every_signal(records):
    values = extract(records, toy_tokenize, common_tokens=np.array(records[0]["prompt_token_ids"]))
    assert set(values) == set(SIGNALS) - OPTIONAL_SIGNALS and not values.skipped and values.n_records == 5
    assert values["prompt_chars"].tolist() == [float(len(r["prompt"])) for r in records]
    assert values["stop_reason"].tolist() == [r["features"]["stop_reason"] for r in records]
    assert values["token_frequency"].dtype == np.int64
    assert values["token_frequency"].size == sum(len(t) for t in toy_tokenize([r["prompt"] for r in records]))


def test_features_fall_back_to_the_record_body(records):
    for r in records:
        r["features"] = {}
    values = extract(records, toy_tokenize)
    assert values["prompt_chars"].tolist() == [float(len(r["prompt"])) for r in records]
    assert values["completion_tokens"].tolist() == [float(r["completions"][0]["tokens"]) for r in records]
    assert values["stop_reason"].tolist() == [r["completions"][0]["finish_reason"] for r in records]
    assert values.skipped["prompt_surprisal"] == "no record carries features.prompt_surprisal"
    assert "latency_ms" in values.skipped and "prompt_tokens" in values.skipped


def test_partially_missing_and_non_finite_features_are_counted_not_fatal(records):
    del records[0]["features"]["prompt_surprisal"]
    records[1]["features"]["prompt_surprisal"] = None
    records[2]["features"]["prompt_surprisal"] = float("nan")
    values = extract(records, toy_tokenize)
    assert values["prompt_surprisal"].size == 2
    assert values.missing["prompt_surprisal"] == 3


def test_no_token_ids_no_tokenizer_or_no_records_skip_with_a_reason(records):
    assert extract(records, None).skipped == {"rare_token_share": "needs the reference's common-token set"}
    for r in records:
        del r["prompt_token_ids"]
    no_ids = extract(records, None, common_tokens=np.array([1]))
    reason = "no record carries prompt_token_ids and no tokenizer given"
    assert no_ids.skipped == {"token_frequency": reason, "rare_token_share": reason}
    assert no_ids.missing["token_frequency"] == no_ids.missing["rare_token_share"] == 5
    empty = extract([], toy_tokenize)
    assert not empty and empty.skipped["token_frequency"] == "no records"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["features"].update(prompt_tokens="31"),
     "record {id}: features.prompt_tokens must be a number, got '31'"),
    (lambda r: r["features"].update(latency_ms=True), "record {id}: features.latency_ms must be a number, got True"),
    (lambda r: r.update(prompt=None), "record {id}: prompt must be a string, got None"),
    (lambda r: r.update(features=[1]), "record {id}: features must be an object"),
    (lambda r: r["features"].update(stop_reason=3), "record {id}: features.stop_reason must be a string, got 3"),
    (lambda r: r.update(completions={"text": "x"}), "record {id}: completions must be a list of objects"),
    (lambda r: r.update(prompt_token_ids=[1, True]),
     "record {id}: prompt_token_ids must be a list of non-negative integers"),
    (lambda r: r.update(prompt_token_ids=[-3]),
     "record {id}: prompt_token_ids must be a list of non-negative integers"),
    (lambda r: (r["features"].pop("completion_tokens"), r["completions"][0].update(tokens="x")),
     "record {id}: completions[0].tokens must be a number, got 'x'"),
])
def test_malformed_records_raise_naming_the_record_and_field(records, mutate, message):
    bad = copy.deepcopy(records)
    mutate(bad[3])
    with pytest.raises(RecordError) as err:
        extract(bad, toy_tokenize)
    assert message.format(id=bad[3]["id"]) in str(err.value)


def test_a_non_object_record_is_named_by_position(records):
    with pytest.raises(RecordError, match=r"record #2: must be a JSON object, got list"):
        extract([*records[:2], [1, 2]], toy_tokenize)


def test_unknown_signal_and_bad_tokenizer_are_clear_errors(records):
    with pytest.raises(KeyError, match="unknown drift signal"):
        extract(records, toy_tokenize, signals=["prompt_length"])
    for r in records:
        del r["prompt_token_ids"]  # only then is the tokenizer called
    with pytest.raises(ValueError, match="tokenize returned 1 token lists for 5 prompts"):
        extract(records, lambda prompts: [[1]])
