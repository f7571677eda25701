"""Tokenize stage: train or attach the tokenizer, then pack the snapshot into training blocks or documents."""
from __future__ import annotations

from typing import Literal, Optional

from prefect import get_run_logger, task

from llmops.infra.config import ModelConfig, TokenizerConfig
from llmops.models.data import build_tokenizer, load_tokenizer, pack_dataset, read_split
from llmops.models.model import tokenizer_config_for
from llmops.models.records import DatasetRef, PackedRef, TokenizerRef
from llmops.tasks.core.context import cache_dir, store, timeout_s


@task(name="build-tokenizer", retries=1, timeout_seconds=timeout_s("build-tokenizer"))
def build_tokenizer_task(cfg: TokenizerConfig, dataset: DatasetRef,
                         model_cfg: Optional[ModelConfig] = None) -> TokenizerRef:
    """Reuses the stored tokenizer when the training split and config are unchanged (content-addressed).

    With ``model_cfg.pretrained`` set, the pretrained model's tokenizer is attached instead of training one.
    """
    st = store()
    cfg = tokenizer_config_for(cfg, model_cfg) if model_cfg else cfg
    texts = read_split(st, dataset, "train") if cfg.kind == "bpe" else []
    ref = build_tokenizer(st, cfg, dataset, texts)
    get_run_logger().info("tokenizer %s: %d tokens at %s", ref.kind, ref.vocab_size, ref.uri)
    return ref


# log_prints off: datasets hashes the map function with dill, which reads its globals from a disassembly printed to
# a captured stdout; with log_prints the print goes to the run log instead (24 lines of bytecode per split)
@task(name="pack-data", retries=1, log_prints=False, timeout_seconds=timeout_s("pack-data"))
def pack_data(dataset: DatasetRef, tokenizer_ref: TokenizerRef, block_size: int, num_proc: int = 1,
              batching: Literal["pack", "pad"] = "pack") -> PackedRef:
    """Blocks of concatenated documents (batching=pack), or one example per document (batching=pad)."""
    st = store()
    tokenizer = load_tokenizer(st, tokenizer_ref, cache_dir())
    splits = {s: read_split(st, dataset, s) for s in ("train", "validation")}
    ref = pack_dataset(st, dataset, tokenizer_ref, splits, tokenizer, block_size, num_proc, batching)
    get_run_logger().info("packed %s %s of at most %d tokens", ref.blocks, ref.layout, block_size)
    return ref
