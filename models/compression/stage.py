"""The compress stage: a run's model quantized to int8, measured beside fp32 (bits per byte, size, latency)."""
from __future__ import annotations

import io
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.config import CompressConfig
from llmops.infra.store import ArtifactStore
from llmops.models.evaluation.scoring import bits_per_byte, score_documents
from llmops.models.model.generation import SamplingParams, complete
from llmops.models.model.loading import download_run_model, load_model
from llmops.models.model.variants import INT8_FILE, quantize_int8, save_int8
from llmops.models.records import QuantReport, TrainRef


def serialized_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict as torch.save writes it (comparable across fp32 and int8)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()



def generation_latency_ms(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                          runs: int, max_new_tokens: int = 16) -> float:
    """Median wall-clock of greedy generation of ``max_new_tokens`` for one prompt at batch 1."""
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)
    complete(model, tokenizer, prompts[:1], params)  # warm-up
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        complete(model, tokenizer, [prompts[i % len(prompts)]], params)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)



def compress_run(store: ArtifactStore, run: TrainRef, texts: Sequence[str], cfg: CompressConfig,
                 cache_dir: Path, stride: Optional[int] = None) -> Optional[QuantReport]:
    """Quantize the run's model to int8, measure it beside fp32, and store the variant under the run.

    Returns None when ``cfg.quantize == "none"``. The variant is marked servable only when its
    bits per byte on ``texts`` rise by at most ``cfg.max_bpb_increase``.
    """
    if cfg.quantize == "none":
        return None
    model, tokenizer = load_model(download_run_model(store, run, cache_dir))
    qmodel = quantize_int8(model)
    fp32_bpb = bits_per_byte(score_documents(model, tokenizer, texts, stride))
    int8_bpb = bits_per_byte(score_documents(qmodel, tokenizer, texts, stride))
    prompts = list(texts[:max(1, cfg.latency_runs)])
    fp32_ms = generation_latency_ms(model, tokenizer, prompts, cfg.latency_runs)
    int8_ms = generation_latency_ms(qmodel, tokenizer, prompts, cfg.latency_runs)
    folder = Path(cache_dir) / "runs" / run.run_id / "int8"
    save_int8(qmodel, folder)
    prefix = f"runs/{run.run_id}/int8"
    hashes = store.upload_dir(folder, prefix)
    return QuantReport(
        variant="int8", uri=store.uri_for(prefix), sha256=hashes[INT8_FILE],
        fp32_bytes=serialized_bytes(model), int8_bytes=serialized_bytes(qmodel),
        fp32_bits_per_byte=fp32_bpb, int8_bits_per_byte=int8_bpb, bpb_increase=int8_bpb - fp32_bpb,
        fp32_latency_ms=fp32_ms, int8_latency_ms=int8_ms, servable=int8_bpb - fp32_bpb <= cfg.max_bpb_increase,
    )
