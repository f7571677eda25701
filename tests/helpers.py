"""Test helpers shared across suites: a tiny tokenizer and tiny registered model versions built offline in seconds."""
from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactStore, LocalStore
from llmops.models.data.ingest import ingest
from llmops.models.data.packing import pack_dataset
from llmops.models.data.snapshot import read_split
from llmops.models.data.tokenizer import build_tokenizer, load_tokenizer, train_bpe
from llmops.models.model.presets import build_config
from llmops.models.model.variants import quantize_int8, save_variant
from llmops.models.records import DatasetRef, GateDecision, ModelVersionRef, TokenizerRef, TrainRef, VersionMetadata
from llmops.models.release.registry import Registry
from llmops.models.training.run import run_training

_CORPUS_MODULES = ("os", "json", "re", "pathlib", "collections", "typing", "functools", "itertools")


def stdlib_texts() -> list[str]:
    """Docstrings of a few standard-library modules: real English text every Python install has."""
    texts = []
    for module_name in _CORPUS_MODULES:
        module = __import__(module_name)
        for attr in sorted(dir(module)):
            doc = getattr(getattr(module, attr, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                texts.append(doc)
    return texts


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on :func:`stdlib_texts` (cached: the same object for a process)."""
    return train_bpe(stdlib_texts(), vocab_size)


def tiny_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, context_length: int = 64) -> PreTrainedModel:
    """An untrained ``tiny`` preset model sized to ``tokenizer``; ``seed`` fixes its weights."""
    config = build_config("tiny", vocab_size=len(tokenizer), context_length=context_length,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def make_registered_model(store: ArtifactStore, name: str, *, alias: Optional[str] = "production", seed: int = 0,
                          int8: bool = False, context_length: int = 64, vocab_size: int = 400,
                          files: Optional[dict] = None, serving_variant: Optional[str] = None) -> ModelVersionRef:
    """Register a new version of a tiny untrained model (tokenizer included) and point ``alias`` at it.

    Args:
        store: The artifact store holding the registry.
        name: Model name in the registry.
        alias: Alias to move to the new version; None leaves aliases alone.
        seed: Weight initialisation seed (versions built with different seeds differ).
        int8: Also register the ``int8`` variant (``quantize_int8`` + ``save_variant``).
        files: Extra files for the version folder (name -> text or bytes), e.g. reference_profile.json.
        serving_variant: Record this variant as the one that passed its gate fastest (what ``auto`` serves).
    """
    tokenizer = tiny_tokenizer(vocab_size)
    model = tiny_model(tokenizer, seed=seed, context_length=context_length)
    registry = Registry(store, name)
    with tempfile.TemporaryDirectory() as tmp:
        folder, variants = Path(tmp) / "model", {}
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if int8:
            save_variant(quantize_int8(model), "int8", Path(tmp) / "int8")
            variants["int8"] = Path(tmp) / "int8"
        metadata = None if serving_variant is None else VersionMetadata(
            run_id="fixture", dataset="fixture", dataset_sha256="0" * 64, tokenizer_sha256="0" * 64,
            gate=GateDecision(promote=True, reason="test fixture", candidate_bits_per_byte=1.0, threshold=3.0,
                              documents=1), test_bits_per_byte=1.0, serving_variant=serving_variant)
        ref = registry.register(folder, variants=variants, files=files, metadata=metadata)
    if alias is not None:
        registry.set_alias(alias, ref.version, reason="test fixture")
        ref = registry.ref(ref.version)
    return ref


@dataclass
class TrainedRun:
    """The pipeline's stages up to a trained run, done for real on the standard-library docstrings."""

    store: LocalStore
    cache: Path
    dataset: DatasetRef
    tokenizer_ref: TokenizerRef
    tokenizer: PreTrainedTokenizerFast
    run: TrainRef


def train_stdlib_run(root: Path, config: PipelineConfig, name: str = "tiny") -> TrainedRun:
    """Ingest :func:`stdlib_texts`, train the BPE, pack, and train the model as ``config`` says, under ``root``."""
    store, cache = LocalStore(root / "store"), root / "cache"
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts()), encoding="utf-8")
    dataset = ingest(config.data.model_copy(update={"sources": [str(src)]}), store, model_name=name, cache_dir=cache)
    tok_ref = build_tokenizer(store, config.tokenizer, dataset, read_split(store, dataset, "train"))
    tokenizer = load_tokenizer(store, tok_ref, cache)
    packed = pack_dataset(store, dataset, tok_ref, {s: read_split(store, dataset, s) for s in ("train", "validation")},
                          tokenizer, config.train.block_size)
    run = run_training(store, packed, tok_ref, tokenizer, config.model, config.train, cache)
    return TrainedRun(store, cache, dataset, tok_ref, tokenizer, run)


def drain_prefect_workers() -> None:
    """Flush and stop Prefect's background event and log senders.

    They are process-wide and keep the API they connected to: a test that talked to its own
    server must drain them before that server goes, or later tests' events go to the dead one.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=30, at_exit=False)
