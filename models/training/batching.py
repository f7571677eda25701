"""Training batches: packed blocks or length-grouped padded documents, drawn deterministically and resumably."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from llmops.models.data.packing import Ragged, TokenData
from llmops.models.training.checkpoint import TrainerState, TrainingError

IGNORE_INDEX = -100  # labels the loss skips (transformers' and torch's cross-entropy convention)


@dataclass(frozen=True)
class Batch:
    """One micro-batch. ``attention_mask`` is None when every position is a real token (packed blocks)."""

    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX on padding
    attention_mask: Optional[torch.Tensor]  # (B, T) int64, 1 on tokens, 0 on padding
    tokens: int  # real (non-padding) tokens
    targets: int  # positions with a next token to predict: per row, its real tokens - 1

    def to(self, device: torch.device) -> Batch:
        pin = device.type == "cuda"  # pinned host memory lets the copy overlap with compute

        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        ids = move(self.input_ids)
        labels = ids if self.labels is self.input_ids else move(self.labels)
        return Batch(ids, labels, move(self.attention_mask), self.tokens, self.targets)


def block_batch(x: torch.Tensor) -> Batch:
    """Full blocks (B, T): every token is real and is its own label (the model shifts labels inside)."""
    return Batch(x, x, None, x.numel(), x.shape[0] * (x.shape[1] - 1))


def pad_batch(sequences: Sequence[np.ndarray]) -> Batch:
    """Right-pad to the longest sequence; padding gets id 0 (any valid id: it is masked) and no label."""
    lengths = [len(s) for s in sequences]
    ids = torch.zeros((len(sequences), max(lengths)), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.from_numpy(np.asarray(seq).astype(np.int64))
        mask[row, :len(seq)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return Batch(ids, labels, mask, sum(lengths), sum(n - 1 for n in lengths))


def _check_enough(n: int, batch_size: int, what: str) -> None:
    if n < batch_size:
        raise TrainingError(
            f"only {n} training {what} for a batch of {batch_size}: "
            f"lower train.batch_size or train.block_size, or add data"
        )


class BlockSampler:
    """Deterministic epochs over the training blocks: epoch e uses permutation(seed + e).

    The position (epoch, cursor) lives in the checkpoint, so a resumed run sees exactly the
    batches an uninterrupted run would have seen.
    """

    def __init__(self, blocks: np.ndarray, batch_size: int, seed: int):
        _check_enough(len(blocks), batch_size, "blocks")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    def next(self, state: TrainerState) -> torch.Tensor:
        """The next batch of blocks, (batch_size, block_size) int64; advances ``state``."""
        if state.cursor + self.batch_size > len(self.blocks):
            state.epoch, state.cursor = state.epoch + 1, 0
        if self._perm_epoch != state.epoch:
            self._perm = np.random.default_rng(self.seed + state.epoch).permutation(len(self.blocks))
            self._perm_epoch = state.epoch
        idx = np.sort(self._perm[state.cursor: state.cursor + self.batch_size])
        state.cursor += self.batch_size
        return torch.from_numpy(self.blocks[idx].astype(np.int64))

    def next_batch(self, state: TrainerState) -> Batch:
        return block_batch(self.next(state))


class LengthGroupedSampler:
    """Deterministic epochs of batches of similar-length documents (less padding than random batches).

    Epoch e: permutation(seed + e) is cut into groups of ``group`` batches; each group is sorted
    by length (longest first) and cut into batches, and the batches are shuffled by the same
    generator, so long and short batches alternate. The remainder that fills no batch waits for
    another epoch. The position (epoch, cursor in examples) lives in the checkpoint, as for
    BlockSampler: a resumed run draws exactly the batches an uninterrupted one would have.
    """

    def __init__(self, data: Ragged, batch_size: int, seed: int, group: int = 32):
        _check_enough(len(data), batch_size, "documents")
        self.data, self.batch_size, self.seed, self.group = data, batch_size, seed, group
        self._lengths = data.lengths
        self._order_epoch, self._order = -1, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Example indices of every batch of ``epoch``, shape (n_batches, batch_size)."""
        rng = np.random.default_rng(self.seed + epoch)
        perm = rng.permutation(len(self.data))
        usable = len(perm) // self.batch_size * self.batch_size
        perm, chunk = perm[:usable], self.batch_size * self.group
        groups = [perm[i:i + chunk] for i in range(0, usable, chunk)]
        # stable sort on -length: ties keep their random order
        ordered = np.concatenate([g[np.argsort(-self._lengths[g], kind="stable")] for g in groups])
        batches = ordered.reshape(-1, self.batch_size)
        return batches[rng.permutation(len(batches))]

    def next_batch(self, state: TrainerState) -> Batch:
        if state.cursor + self.batch_size > len(self.data):
            state.epoch, state.cursor = state.epoch + 1, 0
        if self._order_epoch != state.epoch:
            self._order, self._order_epoch = self.epoch_order(state.epoch), state.epoch
        idx = self._order[state.cursor // self.batch_size]
        state.cursor += self.batch_size
        return pad_batch([self.data[i] for i in idx])


Sampler = Union[BlockSampler, LengthGroupedSampler]


def make_sampler(data: TokenData, batching: str, batch_size: int, seed: int) -> Sampler:
    """The sampler for ``train.batching``: pack needs blocks, pad needs ragged documents."""
    if batching == "pad":
        if not isinstance(data, Ragged):
            raise TrainingError("train.batching=pad needs per-document tokens: pack the data with batching=pad")
        return LengthGroupedSampler(data, batch_size, seed)
    if isinstance(data, Ragged):
        raise TrainingError("train.batching=pack needs token blocks, but the data holds documents (batching=pad)")
    return BlockSampler(data, batch_size, seed)


def fixed_batches(data: TokenData, batch_size: int, n_batches: int) -> Iterator[Batch]:
    """The first ``batch_size * n_batches`` examples in order (validation: the same every time)."""
    n = min(len(data), batch_size * n_batches)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if isinstance(data, Ragged):
            yield pad_batch([data[i] for i in range(start, stop)])
        else:
            yield block_batch(torch.from_numpy(data[start:stop].astype(np.int64)))


def mean_tokens_per_example(data: TokenData) -> float:
    if isinstance(data, Ragged):
        return data.size / max(1, len(data))
    return float(data.shape[1])
