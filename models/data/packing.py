"""Packing: a snapshot's documents tokenized into training blocks or ragged documents, stored content-addressed."""
from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np
from transformers import PreTrainedTokenizerBase

from llmops.infra.store import ArtifactNotFound, ArtifactStore, content_key
from llmops.models.data.tokenizer import TokenizerError
from llmops.models.records import DatasetRef, PackedRef, TokenizerRef

log = logging.getLogger("llmops.packing")


@dataclass(frozen=True)
class Ragged:
    """Variable-length token sequences stored flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray  # (total_tokens,) uint16 or int32
    offsets: np.ndarray  # (n_examples + 1,) int64, offsets[0] == 0

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], dtype=np.int32) -> Ragged:
        arrays = [np.asarray(s, dtype=dtype) for s in sequences]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)]).astype(np.int64)
        ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def size(self) -> int:
        """Total tokens (as ``ndarray.size`` is for blocks)."""
        return int(self.offsets[-1])


TokenData = Union[np.ndarray, Ragged]  # (n_blocks, block_size) blocks, or ragged documents


def _blocks(batch: dict, tokenizer: PreTrainedTokenizerBase, block_size: int) -> dict:
    """datasets.map body: tokenize documents, append eos to each, concatenate, cut into blocks.

    The remainder shorter than a block is dropped per batch (at most block_size - 1 tokens per
    1000 documents), as in the transformers run_clm example.
    """
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    eos = (tokenizer.eos_token_id,)
    total = sum(map(len, ids)) + len(ids)
    # one numpy array, not a list of lists: datasets hands it to Arrow without a per-token Python walk
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(doc, eos) for doc in ids),
                       dtype=np.int64, count=total)
    return {"input_ids": flat[:total // block_size * block_size].reshape(-1, block_size)}


def _map_texts(texts: list[str], body, tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int,
               desc: str):
    """``texts`` through ``body`` with ``datasets.map(batched=True)``, in ``num_proc`` processes when it pays."""
    import datasets

    return datasets.Dataset.from_dict({"text": texts}).map(
        body,
        batched=True,
        batch_size=1000,
        remove_columns=["text"],
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size},
        num_proc=num_proc if num_proc > 1 and len(texts) >= 2000 else None,
        keep_in_memory=True,
        desc=desc,
    )


def _id_dtype(tokenizer: PreTrainedTokenizerBase):
    return np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32


def pack_split(texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int = 1) -> np.ndarray:
    """Token blocks of shape (n_blocks, block_size), packed with ``datasets.map(batched=True)``."""
    packed = _map_texts(texts, _blocks, tokenizer, block_size, num_proc,
                        f"packing {len(texts)} documents into {block_size}-token blocks")
    if len(packed) == 0:
        return np.zeros((0, block_size), dtype=_id_dtype(tokenizer))
    return np.asarray(packed.with_format("numpy")["input_ids"], dtype=_id_dtype(tokenizer))


def _documents(batch: dict, tokenizer: PreTrainedTokenizerBase, block_size: int) -> dict:
    """datasets.map body: one example per document, eos appended, truncated to block_size.

    A truncated document keeps no eos: the model should not learn that it ended there.
    """
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    docs = [[*doc, tokenizer.eos_token_id][:block_size] for doc in ids]
    return {"input_ids": [d for d in docs if len(d) >= 2]}  # one token predicts nothing


def document_split(texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int,
                   num_proc: int = 1) -> Ragged:
    """Per-document token sequences (ragged: flat ids + offsets) for padded, length-grouped batches."""
    docs = _map_texts(texts, _documents, tokenizer, block_size, num_proc,
                      f"tokenizing {len(texts)} documents (at most {block_size} tokens each)")
    return Ragged.from_sequences(docs["input_ids"] if len(docs) else [], dtype=_id_dtype(tokenizer))


Batching = Literal["pack", "pad"]


def layout_for(batching: Batching) -> str:
    """The stored layout a batching mode trains from: ``pack`` -> blocks, ``pad`` -> ragged documents."""
    return "ragged" if batching == "pad" else "blocks"


def _save_split(store: ArtifactStore, prefix: str, split: str, data: Union[np.ndarray, Ragged], tmp: Path) -> None:
    arrays = {f"{split}.npy": data} if isinstance(data, np.ndarray) else {
        f"{split}.ids.npy": data.ids, f"{split}.offsets.npy": data.offsets}
    for name, arr in arrays.items():
        np.save(tmp / name, arr)
        store.put_file(f"{prefix}/{name}", tmp / name)


def pack_dataset(store: ArtifactStore, dataset: DatasetRef, tokenizer_ref: TokenizerRef,
                 splits: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase,
                 block_size: int, num_proc: int = 1, batching: Batching = "pack") -> PackedRef:
    """Tokenize the train and validation splits and store them content-addressed (reused when unchanged).

    ``batching="pack"``: blocks of concatenated documents (the ``blocks`` layout);
    ``batching="pad"``: one example per document (the ``ragged`` layout), see PackedRef.
    """
    layout = layout_for(batching)
    digest = content_key("packed-v1", dataset.sha256, tokenizer_ref.sha256, str(block_size),
                  *(["ragged"] if layout == "ragged" else []))  # the blocks key is unchanged from before layouts
    prefix = f"packed/{digest[:16]}"
    if store.exists(f"{prefix}/manifest.json"):
        return PackedRef.model_validate(store.get_json(f"{prefix}/manifest.json"))
    examples, tokens = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "validation"):
            if layout == "ragged":
                data = document_split(splits[split], tokenizer, block_size, num_proc)
            else:
                data = pack_split(splits[split], tokenizer, block_size, num_proc)
            if split == "train" and len(data) == 0:
                raise TokenizerError(
                    f"the train split of {dataset.uri} holds fewer than {block_size if layout == 'blocks' else 2} "
                    f"tokens: add data or lower train.block_size"
                )
            _save_split(store, prefix, split, data, Path(tmp))
            examples[split], tokens[split] = len(data), int(data.size)
    ref = PackedRef(uri=store.uri_for(f"{prefix}/manifest.json"), sha256=digest, block_size=block_size,
                    blocks=examples, tokens=tokens, layout=layout)
    store.put_json(f"{prefix}/manifest.json", ref.model_dump(mode="json"))
    log.info("packed (%s) %s", layout, json.dumps(tokens))
    return ref


def _load_array(store: ArtifactStore, ref: PackedRef, name: str, cache_dir: Path) -> np.ndarray:
    key = store.key_for(ref.uri).rsplit("/", 1)[0] + f"/{name}"
    local = store.local_path(key)
    if local is None:
        local = Path(cache_dir) / "packed" / ref.sha256[:16] / name
        if not local.exists():
            store.get_file(key, local)
    if not local.exists():
        raise ArtifactNotFound(f"no packed {name} at {store.uri_for(key)}")
    return np.load(local, mmap_mode="r")


def load_packed(store: ArtifactStore, ref: PackedRef, split: str, cache_dir: Path) -> Union[np.ndarray, Ragged]:
    """The examples of ``split``, memory-mapped from a local copy: blocks (n, block_size) or Ragged documents."""
    if ref.layout == "ragged":
        return Ragged(_load_array(store, ref, f"{split}.ids.npy", cache_dir),
                      _load_array(store, ref, f"{split}.offsets.npy", cache_dir))
    return _load_array(store, ref, f"{split}.npy", cache_dir)
