"""Semantic drift (optional): prompts as sentence embeddings, scored by cosine distance to the reference centroid.

The embedding maths and the window's prompt pass; the window check itself is ``llmops.monitoring.check``.

The only module of ``monitoring/`` that uses torch and transformers, imported when an embedder is
built: with ``monitor.semantic_model`` unset nothing here loads.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Optional

import numpy as np

from llmops.infra.config import MonitorConfig
from llmops.infra.store import ArtifactStore
from llmops.infra.traffic.log import Partition, partition_records, window_partitions
from llmops.infra.traffic.parquet import read_prompts
from llmops.monitoring.accumulate import PromptSample, WindowAccumulator, sampling_keys
from llmops.monitoring.batch import Batch
from llmops.monitoring.records import SEMANTIC_SIGNAL as SIGNAL
from llmops.monitoring.records import ReferenceProfile, SemanticProfile


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from any transformers encoder, in batches.

    Args:
        model: Local path or hub id loadable by ``AutoModel`` and ``AutoTokenizer``.
        batch_size: Prompts per forward pass.
        max_length: Tokens per prompt; longer ones are truncated (cost grows with it).
    """

    def __init__(self, model: str, *, batch_size: int = 32, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name, self.batch_size, self.max_length = model, batch_size, max_length
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden) float32, each row of unit length."""
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # (b, t, h)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1): padding does not count
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (b, h)
                rows.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
        hidden_size = self.model.config.hidden_size
        return np.concatenate(rows) if rows else np.zeros((0, hidden_size), np.float32)


def embedder_for(cfg: MonitorConfig, reference: Optional[SemanticProfile] = None) -> Optional[SentenceEmbedder]:
    """The embedder ``cfg`` asks for, or None when semantic drift is off.

    With ``reference`` (a profile's semantic part) its encoder and truncation are used, whatever the
    config names now: distances under two encoders, or two truncations, do not compare.
    """
    if cfg.semantic_model is None:
        return None
    if reference is not None:
        return SentenceEmbedder(reference.model, batch_size=cfg.semantic_batch_size, max_length=reference.max_length)
    return SentenceEmbedder(cfg.semantic_model, batch_size=cfg.semantic_batch_size, max_length=cfg.semantic_max_length)


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Unit vector of the mean embedding (h,)."""
    mean = embeddings.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def cosine_distance(embeddings: np.ndarray, center: np.ndarray) -> np.ndarray:
    """1 - cos(embedding, center) per row (n,), in [0, 2]; rows are unit vectors."""
    return (1.0 - embeddings @ np.asarray(center, embeddings.dtype)).astype(np.float64)


def reference_distances(fit_prompts: Sequence[str], count_prompts: Sequence[str], embedder: SentenceEmbedder
                        ) -> tuple[np.ndarray, np.ndarray, SemanticProfile]:
    """(distances to fit bins on, distances to count, the profile windows are scored with), cross-fitted.

    A prompt is closer to a centroid its own embedding helped to make, so distances to one's own
    centroid are in-sample and smaller than any window's. As for ``rare_token_share``: the counted
    half is scored against the fitting half's centroid (the one windows are scored with), and the
    bin edges are fitted on the fitting half scored against the counted half's centroid.
    """
    fit, count = embedder(fit_prompts), embedder(count_prompts)
    center = centroid(fit)
    profile = SemanticProfile(model=embedder.name, max_length=embedder.max_length, centroid=center.tolist())
    return cosine_distance(fit, centroid(count)), cosine_distance(count, center), profile


def distance_batch(distances: np.ndarray, keys: np.ndarray) -> Batch:
    """A Batch holding only ``semantic_distance`` (the other columns empty: no record fields are counted)."""
    n = distances.size
    return Batch(numbers={SIGNAL: distances}, stop_codes=np.full(n, -1, np.int64), stop_labels=[],
                 token_ids=np.zeros(0, np.int64), token_lengths=np.full(n, -1, np.int64), keys=keys)


class SemanticAccumulator(WindowAccumulator):
    """The window's accumulator plus ``semantic_distance``, which needs the prompts and is fed in its own pass.

    The record signals are accumulated as usual (:meth:`add`); the distances go into a second accumulator
    restricted to this signal (:meth:`add_prompts`), with its own sampling keys in prompt order.
    """

    def __init__(self, profile: ReferenceProfile, sample_size: int, embedder: SentenceEmbedder):
        super().__init__(profile, sample_size)
        if profile.semantic is None or SIGNAL not in profile.continuous:
            raise ValueError(f"{profile.model_name} v{profile.model_version}: the reference profile has no {SIGNAL}")
        if embedder.name != profile.semantic.model:
            raise ValueError(f"the reference profile's {SIGNAL} was computed with {profile.semantic.model!r}, "
                             f"not {embedder.name!r}: distances under different models are not comparable")
        only = profile.model_copy(update={"continuous": {SIGNAL: profile.continuous[SIGNAL]}, "categorical": {},
                                          "common_tokens": []})
        self.semantic = WindowAccumulator(only, sample_size)
        self.embedder, self._center = embedder, np.asarray(profile.semantic.centroid, np.float32)
        self._keys = sampling_keys()

    def add_prompts(self, prompts: Sequence[str]) -> None:
        step = self.embedder.batch_size * 8  # embeddings of a few batches at a time, not of an hour of traffic
        for i in range(0, len(prompts), step):
            chunk = prompts[i:i + step]
            distances = cosine_distance(self.embedder(chunk), self._center)
            self.semantic.add(distance_batch(distances, self._keys.random(distances.size)))

    def summaries(self):
        return {**super().summaries(), **self.semantic.summaries()}


def partition_prompts(store: ArtifactStore, part: Partition, start: datetime, end: datetime, version: int) -> list[str]:
    """The prompts of ``version``'s records in [start, end) of one hour partition, in the order the streaming
    check reads them (its Parquet file, then its JSONL files)."""
    prompts = read_prompts(store, part.parquet, start, end, version) if part.parquet else []
    prompts += [r["prompt"] for r in partition_records(store, replace(part, parquet=None), start, end, [])
                if r.get("version") == version and isinstance(r.get("prompt"), str)]
    return prompts


def window_prompts(store: ArtifactStore, model: str, start: datetime, end: datetime, version: int):
    """The prompts of ``version``'s records in [start, end), one hour partition in memory at a time, in
    the order the streaming check reads them."""
    for part in window_partitions(store, model, start, end):
        yield partition_prompts(store, part, start, end, version)


def sample_prompts(batches: Iterable[Sequence[str]], size: int, *,
                   partition: Optional[str] = None) -> tuple[list[str], int]:
    """(a uniform sample without replacement of at most ``size`` prompts of the stream, how many it had).

    The KS reservoirs' bottom-k sampling: every prompt draws a key in stream order from a fixed
    seed (and ``partition``'s name, see :func:`~llmops.monitoring.accumulate.sampling_keys`) and the
    ``size`` smallest keys stay, so the same prompts give the same sample however they are batched.
    """
    keys, sample = sampling_keys(partition=partition), PromptSample(size)
    for prompts in batches:
        sample.add(prompts, keys.random(len(prompts)))
    return sample.prompts(), sample.seen


