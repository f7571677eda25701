"""Tokenizers: train a byte-level BPE or attach an existing one, stored content-addressed."""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llmops.infra.config import TokenizerConfig
from llmops.infra.store import ArtifactStore, content_key
from llmops.models.records import DatasetRef, TokenizerRef

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


def build_tokenizer(store: ArtifactStore, cfg: TokenizerConfig, dataset: DatasetRef,
                    train_texts: list[str]) -> TokenizerRef:
    """Train (or attach) the tokenizer, store it content-addressed, and return its record.

    The key hashes the training split and the config, so an unchanged snapshot reuses the
    stored tokenizer instead of training again.
    """
    source = cfg.path if cfg.kind == "pretrained" else dataset.splits["train"].sha256
    key = content_key("tokenizer-v1", cfg.model_dump_json(exclude={"num_proc"}), source)[:16]
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
        sha256=hashes.get("tokenizer.json", content_key(*sorted(hashes.values()))),
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


