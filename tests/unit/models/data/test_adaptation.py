"""The adaptation snapshot of a drift-triggered retrain: a window's prompts cleaned, held out or trained on, mixed
with a replay of the base dataset; on a real local store, with traffic written as the server writes it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import pytest

from llmops.infra.config import AdaptConfig, DataConfig
from llmops.infra.store import ArtifactStore, open_store
from llmops.infra.traffic.log import write_records
from llmops.models.data import NotEnoughTraffic, adaptation_snapshot, ingest, read_split
from llmops.models.data.ingest import split_hash
from llmops.models.records import DatasetRef
from llmops.monitoring.synthetic import synthetic_records

MODEL = "lm"
T0 = datetime(2025, 3, 4, 14, tzinfo=timezone.utc)
START, END = T0 + timedelta(minutes=10), T0 + timedelta(minutes=50)
HOOK = "tests.unit.models.data.test_adaptation:drop_marked"
COMPLETION_MARKER = "zzcompletionmarkerzz"
OUTSIDE_MARKER = "outsidewindowmarker"


def drop_marked(text: str) -> Optional[str]:
    """The redaction hook of these tests: drops a prompt that says so."""
    return None if "DROP-THIS-PROMPT" in text else text


def base_doc(i: int) -> str:  # 19 words: a copy of part of one is a 13-word run
    return f"base document {i} explains how module{i} works with example{i} and notes{i} written for careful " \
           f"readers of the manual"


def good_prompt(i: int) -> str:  # no 13-word run in common with any other text here
    return f"user {i} asks about topic{i} and subject{i} in detail please"


def pair(p: int) -> tuple[str, str]:
    """Two prompts sharing a 14-word run: when one is held out, the other must not train."""
    run = " ".join(f"pair{p}word{j}" for j in range(14))
    return f"{run} first", f"{run} second"


@dataclass
class World:
    store: ArtifactStore
    base: DatasetRef
    base_train: list[str]
    base_validation: list[str]
    base_test: list[str]
    good: list[str]
    pairs: list[tuple[str, str]]
    emails: list[str]  # prompts as captured
    redacted: list[str]  # the same after redaction
    window_records: int
    cache: Path


def _records(prompts: list, start: datetime) -> list[dict]:
    records = synthetic_records(len(prompts), seed=3, start=start, model=MODEL)
    for record, prompt in zip(records, prompts):
        record["prompt"] = prompt
    return records


def make_world(tmp_path: Path) -> World:
    store = open_store()
    base_path = tmp_path / "base.jsonl"
    base_path.write_text("".join(json.dumps({"text": base_doc(i)}) + "\n" for i in range(60)), encoding="utf-8")
    cache = tmp_path / "cache"
    base = ingest(DataConfig(sources=[str(base_path)]), store, model_name=MODEL, cache_dir=cache)
    splits = {name: read_split(store, base, name) for name in ("train", "validation", "test")}

    good = [good_prompt(i) for i in range(40)]
    pairs = [pair(p) for p in range(6)]
    emails = [f"user {100 + i} writes from person{i}@example.com about the broken login page" for i in range(2)]
    redacted = [f"user {100 + i} writes from [REDACTED] about the broken login page" for i in range(2)]
    prompts = good + [t for ab in pairs for t in ab] + emails + [
        good[0], f"   {good[1]}  \n",  # duplicates (the second once stripped)
        "hi there",  # too short
        12345, None,  # not text
        "user 999 says DROP-THIS-PROMPT because it holds the secret merger terms",  # the hook drops it
        splits["test"][0],  # a copy of a base test document
        f"Please summarise this: {splits['validation'][0]} Thank you!",  # contains a base validation document
    ]
    records = _records(prompts, T0 + timedelta(minutes=15))
    records[2]["completions"][0]["text"] = f"the model answered {COMPLETION_MARKER} here"
    records[3]["ts"] = START.isoformat()  # the window includes its start ...
    records[4]["ts"] = (END - timedelta(milliseconds=1)).isoformat()
    outside = _records([f"prompt {OUTSIDE_MARKER} {i} long enough to be training text" for i in range(2)], T0)
    outside[0]["ts"] = (START - timedelta(seconds=1)).isoformat()
    outside[1]["ts"] = END.isoformat()  # ... and excludes its end
    write_records(store, MODEL, records + outside, flushed_at=T0 + timedelta(minutes=15))
    for hour in (-1, 1):  # whole hours before and after the window
        when = T0 + timedelta(hours=hour, minutes=20)
        write_records(store, MODEL, _records([f"{OUTSIDE_MARKER} hour {hour} prompt number {i} of many"
                                              for i in range(5)], when))
    return World(store, base, splits["train"], splits["validation"], splits["test"], good, pairs, emails,
                 redacted, len(records), cache)


@pytest.fixture
def world(tmp_path) -> World:
    return make_world(tmp_path)


def snapshot(world: World, min_holdout: int = 1, data: Optional[DataConfig] = None, **adapt) -> DatasetRef:
    adapt = {"min_traffic_records": 5, **adapt}
    return adaptation_snapshot(
        world.store, model_name=MODEL, data=data or DataConfig(redact={"hook": HOOK}), adapt=AdaptConfig(**adapt),
        base_version=3, base_dataset=world.base, start=START, end=END, cache_dir=world.cache,
        min_holdout=min_holdout)


def splits_of(store: ArtifactStore, ref: DatasetRef) -> dict[str, list[str]]:
    return {name: read_split(store, ref, name) for name in ("train", "validation", "test")}


def test_counts_splits_and_manifest(world):
    ref = snapshot(world)
    a = ref.adaptation
    splits = splits_of(world.store, ref)
    usable = set(world.good) | {t for ab in world.pairs for t in ab} | set(world.redacted)
    assert len(usable) == 54

    assert (a.base_version, a.base_dataset, a.window_start, a.window_end) == (3, world.base.uri, START, END)
    assert a.traffic_records == a.sampled_from == world.window_records == 62
    assert a.duplicates == 2
    assert a.invalid == {"too_short": 1, "not_text": 2}
    assert a.redacted == 2
    assert a.dropped_by_hook == 1
    assert a.eval_overlap == 2

    # validation is the held-out traffic: round(0.3 * 54) usable prompts
    validation = splits["validation"]
    assert a.holdout == len(validation) == round(0.3 * 54) == 16
    assert set(validation) <= usable and len(set(validation)) == len(validation)
    # a training prompt sharing a 14-word run with a held-out one is dropped
    partner = {x: y for ab in world.pairs for x, y in (ab, ab[::-1])}
    excluded = {x for x in partner if x not in validation and partner[x] in validation}
    assert excluded, "precondition: some pair is split between held-out and training prompts"
    assert a.holdout_overlap == len(excluded)

    train = splits["train"]
    traffic_train = [t for t in train if t in usable]
    replayed = [t for t in train if t not in usable]
    assert sorted(traffic_train) == sorted(usable - set(validation) - excluded)
    assert a.traffic_train == len(traffic_train) == 54 - 16 - len(excluded)
    assert set(replayed) <= set(world.base_train) and len(set(replayed)) == len(replayed)
    share = AdaptConfig().traffic_share
    assert a.replay == len(replayed) == min(round(a.traffic_train * (1 - share) / share), len(world.base_train))
    assert len(train) == a.traffic_train + a.replay

    assert splits["test"] == world.base_test  # the old slice: the base test split, unchanged
    assert not set(train) & (set(validation) | set(splits["test"]))

    manifest = world.store.get_json(world.store.key_for(ref.uri))
    assert manifest["adaptation"] == a.model_dump(mode="json")
    assert ref.name == "corpus-adapt"
    assert ref.rejected == {"not_text": 2, "too_short": 1}
    assert ref.sources == [f"traffic://{MODEL}?start={START.isoformat()}&end={END.isoformat()}",
                           f"replay:{world.base.uri}"]


def test_prompts_are_redacted_and_the_dropped_one_is_kept_nowhere(world):
    ref = snapshot(world)
    texts = [t for split in splits_of(world.store, ref).values() for t in split]
    assert not any("@example.com" in t for t in texts)
    assert set(world.redacted) <= set(texts)
    stored = [world.store.get_text(world.store.key_for(ref.quarantine_uri)),
              world.store.get_text(world.store.key_for(ref.uri))]
    assert not any("merger" in t for t in texts + stored)
    assert not any("@example.com" in t for t in stored)


def test_evaluation_documents_never_train(world):
    ref = snapshot(world)
    train = splits_of(world.store, ref)["train"]
    assert world.base_test[0] not in train
    assert not any(world.base_validation[0] in t for t in train)


def test_records_outside_the_window_are_not_read(world):
    ref = snapshot(world)
    texts = [t for split in splits_of(world.store, ref).values() for t in split]
    assert not any(OUTSIDE_MARKER in t for t in texts)
    assert good_prompt(3) in texts and good_prompt(4) in texts  # the boundary records inside are read
    assert ref.adaptation.traffic_records == world.window_records


def test_completions_are_never_used(world):
    ref = snapshot(world)
    texts = [t for split in splits_of(world.store, ref).values() for t in split]
    assert not any(COMPLETION_MARKER in t for t in texts)
    assert COMPLETION_MARKER not in world.store.get_text(world.store.key_for(ref.uri))
    assert COMPLETION_MARKER not in world.store.get_text(world.store.key_for(ref.quarantine_uri))


def test_the_holdout_is_at_least_min_holdout_and_at_most_max_holdout(world):
    assert snapshot(world, min_holdout=30).adaptation.holdout == 30  # 0.3 * 54 is 16: raised to 30
    capped = snapshot(world, max_holdout=10)
    assert capped.adaptation.holdout == 10
    assert len(read_split(world.store, capped, "validation")) == 10
    assert snapshot(world, min_holdout=30, max_holdout=10).adaptation.holdout == 10  # the cap wins


def test_the_held_out_prompts_are_those_of_the_smallest_split_hashes(world):
    ref = snapshot(world)
    validation = set(read_split(world.store, ref, "validation"))
    usable = set(world.good) | {t for ab in world.pairs for t in ab} | set(world.redacted)
    order = sorted(usable, key=lambda t: split_hash(t, 0))
    assert validation == set(order[:16])


def test_the_same_inputs_give_the_same_snapshot(world):
    first, again = snapshot(world), snapshot(world)
    assert first.sha256 == again.sha256 and first.uri == again.uri
    other = snapshot(world, traffic_share=0.6)  # fewer replayed documents than the base split holds
    assert other.sha256 != first.sha256


def test_too_little_traffic_to_train_on_raises(world):
    with pytest.raises(NotEnoughTraffic, match=r"54 usable prompt\(s\) of 62 traffic record\(s\)"):
        snapshot(world, min_traffic_records=1000)
    with pytest.raises(NotEnoughTraffic):  # holding out all but 4 of the 54 leaves too few
        snapshot(world, min_holdout=50, max_holdout=50, min_traffic_records=5)
    assert not world.store.list("datasets/corpus-adapt")


def test_max_traffic_records_samples_the_window_down(world):
    ref = snapshot(world, max_traffic_records=10, min_traffic_records=1)
    a = ref.adaptation
    assert (a.traffic_records, a.sampled_from) == (10, world.window_records)
    handled = (a.duplicates + sum(a.invalid.values()) + a.dropped_by_hook + a.eval_overlap + a.holdout_overlap
               + a.holdout + a.traffic_train)
    assert handled == 10  # every sampled record is accounted for once


def test_traffic_share_one_replays_nothing(world):
    ref = snapshot(world, traffic_share=1.0)
    assert ref.adaptation.replay == 0
    train = read_split(world.store, ref, "train")
    assert not set(train) & set(world.base_train)


def test_the_replay_is_capped_by_the_base_training_split(world):
    ref = snapshot(world, traffic_share=0.1)  # wants 9 replayed documents per traffic prompt
    assert ref.adaptation.replay == len(world.base_train)
    assert set(world.base_train) <= set(read_split(world.store, ref, "train"))


def test_a_naive_window_bound_is_refused(world):
    with pytest.raises(ValueError, match="timezone-aware"):
        adaptation_snapshot(world.store, model_name=MODEL, data=DataConfig(), adapt=AdaptConfig(), base_version=3,
                            base_dataset=world.base, start=START.replace(tzinfo=None), end=END,
                            cache_dir=world.cache)


def test_a_held_out_prompt_is_never_trained_on_through_the_replay(world):
    # the base training document of the smallest split hash is held out when it comes back as a prompt
    copied = min(world.base_train, key=lambda t: split_hash(t, 0))
    write_records(world.store, MODEL, _records([copied], T0 + timedelta(minutes=30)))
    ref = snapshot(world, traffic_share=0.1)  # the replay takes the whole base training split
    splits = splits_of(world.store, ref)
    assert copied in splits["validation"], "precondition: the copy is held out"
    assert copied not in splits["train"]
