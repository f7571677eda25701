"""int8 dynamic quantization of the Linear layers, its serialisation, and size/latency measurement."""
from __future__ import annotations

import copy
import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from infra.config import CompressConfig
from infra.store import ArtifactStore
from models.evaluation import bits_per_byte, score_documents
from models.generation import SamplingParams, complete
from models.records import QuantReport, TrainRef
from models.runs import download_run_model

INT8_FILE = "model.int8.pt"


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 Linear.

    Weights are int8 (per-tensor affine); activations are quantized on the fly per batch. Llama
    layers are ``nn.Linear``; GPT-2's ``Conv1D`` blocks are not, so only its head is quantized.
    ``torch.ao.quantization`` is deprecated in favour of torchao, which is not a dependency yet;
    it still ships with torch and its state dicts load with ``weights_only=True``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def save_int8(qmodel: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INT8_FILE
    torch.save(qmodel.state_dict(), path)
    (folder / "quantization.json").write_text(json.dumps(
        {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8", "modules": ["torch.nn.Linear"]},
        indent=2,
    ))
    return path


def load_int8(model_dir: Path, int8_dir: Path) -> PreTrainedModel:
    """Rebuild the int8 model: the fp32 architecture from config.json, quantized, then the int8 weights."""
    # from_config, not the meta device: non-persistent buffers (RoPE's inv_freq) must be computed
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="sdpa")
    qmodel = quantize_int8(skeleton)
    state = torch.load(int8_dir / INT8_FILE, map_location="cpu", weights_only=True)
    qmodel.load_state_dict(state)
    return qmodel.eval()


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
    local = download_run_model(store, run, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(local, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(local)
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
