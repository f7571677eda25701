"""Tokenizers: byte-level BPE round trips, attaching, content-addressed reuse, packing into blocks."""
from __future__ import annotations

import numpy as np
import pytest

from llmops.infra.config import DataConfig, TokenizerConfig
from llmops.infra.store import LocalStore
from llmops.models.data.ingest import ingest
from llmops.models.data.packing import pack_dataset, pack_split
from llmops.models.data.snapshot import read_split
from llmops.models.data.tokenizer import (
    EOS,
    TokenizerError,
    attach_tokenizer,
    build_tokenizer,
    load_tokenizer,
    train_bpe,
)

DOCS = [f"Document {i}: return the value of key number {i} from the mapping, or None. ümlaut ✓" for i in range(200)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS, vocab_size=400)


def test_bpe_round_trips_any_text_including_unseen_bytes(tok):
    assert len(tok) <= 400 and tok.eos_token == EOS and tok.pad_token == EOS
    for text in ["Document 3: return", "never seen: 漢字 🙂 \x07", ""]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_attach_a_saved_tokenizer_and_explain_a_missing_one(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    again = attach_tokenizer(str(tmp_path / "t"))
    assert again("Document 1")["input_ids"] == tok("Document 1")["input_ids"]
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        attach_tokenizer(str(tmp_path / "nope"))


def test_packing_concatenates_documents_with_eos_between(tok):
    blocks = pack_split(DOCS[:50], tok, block_size=16)
    assert blocks.ndim == 2 and blocks.shape[1] == 16 and blocks.dtype == np.uint16
    flat = blocks.reshape(-1).tolist()
    first = tok(DOCS[0], add_special_tokens=False)["input_ids"]
    assert flat[:len(first) + 1] == [*first, tok.eos_token_id]
    assert (blocks == tok.eos_token_id).sum() >= 40  # roughly one per document


@pytest.fixture
def snapshot(tmp_path):
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(f'{{"text": "{d}"}}\n' for d in DOCS))
    ref = ingest(DataConfig(sources=[str(src)]), store, model_name="m", cache_dir=tmp_path / "cache")
    return store, ref


def test_tokenizer_and_blocks_are_reused_for_unchanged_data(snapshot, tmp_path):
    store, ref = snapshot
    cfg = TokenizerConfig(vocab_size=300)
    first = build_tokenizer(store, cfg, ref, read_split(store, ref, "train"))
    again = build_tokenizer(store, cfg, ref, [])  # no texts needed: the stored one is reused
    assert again == first and first.trained_on == ref.sha256
    other = build_tokenizer(store, TokenizerConfig(vocab_size=320), ref, read_split(store, ref, "train"))
    assert other.uri != first.uri
    tokenizer = load_tokenizer(store, first, tmp_path / "cache")
    splits = {s: read_split(store, ref, s) for s in ("train", "validation")}
    packed = pack_dataset(store, ref, first, splits, tokenizer, block_size=16)
    assert packed.blocks["train"] > 0 and packed.tokens["train"] == packed.blocks["train"] * 16
    assert pack_dataset(store, ref, first, {}, tokenizer, block_size=16) == packed


def test_a_train_split_smaller_than_one_block_is_explained(snapshot, tmp_path):
    store, ref = snapshot
    tokenizer_ref = build_tokenizer(store, TokenizerConfig(vocab_size=300), ref, read_split(store, ref, "train"))
    tokenizer = load_tokenizer(store, tokenizer_ref, tmp_path / "cache")
    with pytest.raises(TokenizerError, match="fewer than 100000 tokens: add data or lower train.block_size"):
        pack_dataset(store, ref, tokenizer_ref, {"train": DOCS[:3], "validation": DOCS[:1]}, tokenizer, 100_000)


def test_an_empty_train_split_cannot_train_a_tokenizer(snapshot):
    store, ref = snapshot
    with pytest.raises(TokenizerError, match="train split of .* is empty"):
        build_tokenizer(store, TokenizerConfig(vocab_size=301), ref, [])
