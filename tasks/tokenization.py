"""Tokenize stage: train or attach the tokenizer, then pack the snapshot into training blocks."""
from __future__ import annotations

from prefect import get_run_logger, task

from infra.config import TokenizerConfig
from models.ingest import read_split
from models.records import DatasetRef, PackedRef, TokenizerRef
from models.tokenizer import build_tokenizer, load_tokenizer, pack_dataset
from tasks.common import cache_dir, store


@task(name="build-tokenizer", retries=1)
def build_tokenizer_task(cfg: TokenizerConfig, dataset: DatasetRef) -> TokenizerRef:
    """Reuses the stored tokenizer when the training split and config are unchanged (content-addressed)."""
    st = store()
    texts = read_split(st, dataset, "train") if cfg.kind == "bpe" else []
    ref = build_tokenizer(st, cfg, dataset, texts)
    get_run_logger().info("tokenizer %s: %d tokens at %s", ref.kind, ref.vocab_size, ref.uri)
    return ref


@task(name="pack-data", retries=1)
def pack_data(dataset: DatasetRef, tokenizer_ref: TokenizerRef, block_size: int, num_proc: int = 1) -> PackedRef:
    st = store()
    tokenizer = load_tokenizer(st, tokenizer_ref, cache_dir())
    splits = {s: read_split(st, dataset, s) for s in ("train", "validation")}
    ref = pack_dataset(st, dataset, tokenizer_ref, splits, tokenizer, block_size, num_proc)
    get_run_logger().info("packed %s blocks of %d tokens", ref.blocks, block_size)
    return ref
