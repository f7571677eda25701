"""Tokenizers: train a byte-level BPE or attach an existing one, and pack a snapshot into token blocks or documents."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Literal, Union

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from infra.config import TokenizerConfig
from infra.store import ArtifactStore, ArtifactNotFound
from models.batching import Ragged
from models.records import DatasetRef, PackedRef, TokenizerRef

log = logging.getLogger("llmops.tokenizer")

EOS = "<|endoftext|>"


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, loaded or used as configured."""


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style: no unknown tokens, any byte sequence round-trips)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def attach_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load an existing tokenizer (local folder, or hub id when online) and make sure it can end documents."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load tokenizer {name_or_path!r}: {exc}") from None
    if tokenizer.eos_token_id is None:
        raise TokenizerError(f"tokenizer {name_or_path!r} has no eos token; documents could not be separated")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def build_tokenizer(store: ArtifactStore, cfg: TokenizerConfig, dataset: DatasetRef, train_texts: list[str]) -> TokenizerRef:
    """Train (or attach) the tokenizer, store it content-addressed, and return its record.

    The key hashes the training split and the config, so an unchanged snapshot reuses the
    stored tokenizer instead of training again.
    """
    source = cfg.path if cfg.kind == "pretrained" else dataset.splits["train"].sha256
    key = _key("tokenizer-v1", cfg.model_dump_json(exclude={"num_proc"}), source)[:16]
    prefix = f"tokenizers/{key}"
    if store.exists(f"{prefix}/manifest.json"):
        return TokenizerRef.model_validate(store.get_json(f"{prefix}/manifest.json"))
    if cfg.kind == "pretrained":
        tokenizer = attach_tokenizer(cfg.path)
    else:
        if not train_texts:
            raise TokenizerError(f"the train split of {dataset.uri} is empty: nothing to train a tokenizer on")
        tokenizer = train_bpe(train_texts, cfg.vocab_size, cfg.min_frequency)
        log.info("trained a byte-level BPE of %d tokens on %d documents", len(tokenizer), len(train_texts))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        hashes = store.upload_dir(tmp, prefix)
    ref = TokenizerRef(
        uri=store.uri_for(prefix),
        sha256=hashes.get("tokenizer.json", _key(*sorted(hashes.values()))),
        kind=cfg.kind,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        trained_on=dataset.sha256 if cfg.kind == "bpe" else None,
    )
    store.put_json(f"{prefix}/manifest.json", ref.model_dump(mode="json"))
    return ref


def load_tokenizer(store: ArtifactStore, ref: TokenizerRef, cache_dir: Path) -> PreTrainedTokenizerBase:
    """Download a stored tokenizer (once) into the cache and load it."""
    local = Path(cache_dir) / "tokenizers" / ref.sha256[:16]
    if not (local / "tokenizer_config.json").exists():
        store.download_dir(store.key_for(ref.uri), local)
    return attach_tokenizer(str(local))


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
    digest = _key("packed-v1", dataset.sha256, tokenizer_ref.sha256, str(block_size),
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
