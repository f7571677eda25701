"""The data of a drift-triggered retrain: the window's prompts, cleaned and split, mixed with a replay of production's
training data, as an ordinary dataset snapshot.

Only prompts are taken, never the model's completions (a model trained on its own output learns nothing new and
drifts toward its own errors). Each prompt is validated like ingested text, redacted, deduplicated, and dropped when
it overlaps an evaluation document; a hash of its text then holds it out or lets it train. The snapshot's splits:

- ``train``: the traffic that trains, plus ``replay`` documents of the base version's training split, shuffled;
- ``validation``: the held-out traffic (the gate's new slice; the new version's reference profile is built on it);
- ``test``: the base version's test split, unchanged (the gate's old slice).
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from llmops.infra.config import AdaptConfig, DataConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import as_utc, read_window
from llmops.models.data.ingest import check_text, split_hash
from llmops.models.data.leakage import OverlapIndex
from llmops.models.data.redaction import Redactor
from llmops.models.data.snapshot import Kept, load_ref, read_split, write_snapshot
from llmops.models.records import Adaptation, DatasetRef

logger = logging.getLogger("llmops.ingest")


class NotEnoughTraffic(ValueError):
    """Too few usable prompts in the window to adapt on (the caller retrains in full instead)."""


def adaptation_snapshot(store: ArtifactStore, *, model_name: str, data: DataConfig, adapt: AdaptConfig,
                        base_version: int, base_dataset: DatasetRef, start: datetime, end: datetime,
                        cache_dir: Path, min_holdout: int = 1) -> DatasetRef:
    """Snapshot the adaptation data of ``model_name``'s traffic in ``[start, end)`` (see the module docstring).

    ``adapt.holdout_fraction`` of the usable prompts are held out, at least ``min_holdout`` (what a reference
    profile needs) and at most ``adapt.max_holdout``.

    Raises:
        NotEnoughTraffic: fewer than ``adapt.min_traffic_records`` prompts are left to train on.
    """
    start, end = as_utc(start, "start"), as_utc(end, "end")
    window = read_window(store, model_name, start, end)
    records = list(window)
    if len(records) > adapt.max_traffic_records:
        records = random.Random(0).sample(records, adapt.max_traffic_records)
    stats: dict[str, Any] = {"sampled_from": len(window), "traffic_records": len(records)}
    prompts, quarantine = _clean(records, data, Redactor(data.redact), stats)
    evaluation = OverlapIndex(read_split(store, base_dataset, "validation") + read_split(store, base_dataset, "test"),
                              adapt.leakage_ngram)
    usable = [p for p in prompts if not evaluation.overlaps(p)]
    stats["eval_overlap"] = len(prompts) - len(usable)
    # the held-out slice: the prompts of the smallest split hashes, so a prompt's side never depends on the others
    order = sorted(usable, key=lambda p: split_hash(p, data.split_seed))
    k = min(max(round(adapt.holdout_fraction * len(usable)), min_holdout), adapt.max_holdout)
    holdout, trains = order[:k], order[k:]
    if len(trains) < adapt.min_traffic_records:
        raise NotEnoughTraffic(
            f"{len(usable)} usable prompt(s) of {len(window)} traffic record(s) of {model_name} between "
            f"{start.isoformat()} and {end.isoformat()}: after holding out {k}, {len(trains)} are left to train on and "
            f"adapt.min_traffic_records is {adapt.min_traffic_records}")
    held = OverlapIndex(holdout, adapt.leakage_ngram)
    traffic_train = [p for p in trains if not held.overlaps(p)]
    wanted = round(len(traffic_train) * (1 - adapt.traffic_share) / adapt.traffic_share)
    replay, skipped = _replay(read_split(store, base_dataset, "train"), wanted, held)
    stats["holdout_overlap"] = len(trains) - len(traffic_train) + skipped
    source = f"traffic://{model_name}?start={start.isoformat()}&end={end.isoformat()}"
    train = [Kept(t, source, i) for i, t in enumerate(traffic_train, 1)]
    train += [Kept(t, f"replay:{base_dataset.uri}", i) for i, t in enumerate(replay, 1)]
    random.Random(2).shuffle(train)
    splits = {"train": train, "validation": [Kept(t, source, i) for i, t in enumerate(holdout, 1)],
              "test": [Kept(t, base_dataset.uri, i) for i, t in enumerate(read_split(store, base_dataset, "test"), 1)]}
    adaptation = Adaptation(base_version=base_version, base_dataset=base_dataset.uri, window_start=start,
                            window_end=end, holdout=len(holdout), traffic_train=len(traffic_train),
                            replay=len(replay), **stats)
    cfg = data.model_copy(update={"dataset_name": f"{data.dataset_name}-adapt",
                                  "sources": [source, f"replay:{base_dataset.uri}"]})
    rejected = dict(sorted(Counter(entry["reason"] for entry in quarantine).items()))
    ref = write_snapshot(store, cfg, splits, quarantine,
                         {"rejected": rejected, "duplicates": stats["duplicates"], "per_source": {},
                          "adaptation": adaptation.model_dump(mode="json")}, Path(cache_dir) / "tmp")
    logger.info("adaptation data from v%d's traffic: %s -> %s", base_version,
                adaptation.model_dump(exclude={"base_dataset", "window_start", "window_end"}), ref.uri)
    return load_ref(store, ref.uri)


def _replay(base_train: list[str], wanted: int, held: OverlapIndex) -> tuple[list[str], int]:
    """(``wanted`` documents of the base training split in a seeded order, how many were skipped because they
    overlap a held-out prompt: a held-out prompt is never trained on, not even as a replayed copy)."""
    order = list(range(len(base_train)))
    random.Random(1).shuffle(order)
    replay: list[str] = []
    skipped = 0
    for i in order:
        if len(replay) == wanted:
            break
        if held.overlaps(base_train[i]):
            skipped += 1
        else:
            replay.append(base_train[i])
    return replay, skipped


def _clean(records: list[dict], data: DataConfig, redactor: Redactor,
           stats: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The window's prompts validated, redacted and deduplicated (first wins), in order; counts go to ``stats``."""
    invalid: Counter = Counter()
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    prompts: list[str] = []
    redacted = dropped = duplicates = 0
    for index, record in enumerate(records, 1):
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            problem = ("not_text", f"prompt is {type(prompt).__name__}")
        else:
            text, changed = redactor(prompt)
            redacted += changed and text is not None
            if text is None:
                dropped += 1
                continue  # the hook decided this prompt must not be kept anywhere, previews included
            problem = check_text(text, data.min_chars, data.max_chars)
            if problem is None:
                text = text.strip()
                if text in seen:
                    duplicates += 1
                else:
                    seen.add(text)
                    prompts.append(text)
                continue
        invalid[problem[0]] += 1
        quarantine.append({"reason": problem[0], "source": f"record {record.get('id', index)}", "line": index,
                           "detail": problem[1], "message": f"traffic record {index}: {problem[0]}: {problem[1]}",
                           "preview": ""})  # no preview: a rejected prompt was not necessarily redacted yet
    stats.update(invalid=dict(invalid), redacted=int(redacted), dropped_by_hook=dropped, duplicates=duplicates)
    return prompts, quarantine
