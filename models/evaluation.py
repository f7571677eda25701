"""Evaluation: sliding-window perplexity and bits per byte per document, samples, and the champion/challenger gate."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from infra.config import EvalConfig, GateConfig
from infra.store import ArtifactStore
from models.generation import SamplingParams, complete, context_length
from models.ingest import read_split
from models.kernels import linear_kernels, use_onednn
from models.records import DatasetRef, DocScores, EvalReport, GateDecision, Sample, SampleParams, SplitEval, TrainRef
from models.registry import Registry
from models.runs import download_run_model

LN2 = math.log(2)


def _windows(seq: list[int], ctx: int, stride: int) -> list[tuple[list[int], int]]:
    """(window, number of targets scored at its end) covering every target of ``seq[1:]`` once.

    Each window after the first overlaps the previous by at least ``ctx - stride`` tokens, so every
    scored token sees at least that much context (the sliding-window evaluation of the
    transformers perplexity guide). Unlike the guide's, the last window also spans a full context
    (when ``seq`` has one), rather than starting ``stride`` after the previous and scoring its
    targets with less context than the model could use.
    """
    out, prev_end, begin = [], 1, 0
    while True:
        end = min(begin + ctx, len(seq))
        out.append((seq[max(0, end - ctx):end], end - prev_end))
        if end == len(seq):
            return out
        prev_end, begin = end, begin + stride


@torch.no_grad()
def score_documents(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                    stride: Optional[int] = None, batch_size: int = 16) -> DocScores:
    """Summed NLL (nats), token count and byte count of every document, scored after an eos marker."""
    ctx = context_length(model)
    stride = min(stride or max(1, ctx // 2), ctx - 1)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    jobs = []  # (doc index, window, targets)
    for doc, toks in enumerate(ids):
        for window, targets in _windows([tokenizer.eos_token_id, *toks], ctx, stride):
            jobs.append((doc, window, targets))
    jobs.sort(key=lambda j: len(j[1]))  # similar lengths together: less padding
    nll = np.zeros(len(ids))
    device = model.device
    # scoring is batched matmuls, where oneDNN beats MKL on the CPUs models.kernels picks it for
    onednn = use_onednn("auto", device, "fp32" if model.dtype == torch.float32 else str(model.dtype))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        width = max(len(w) for _, w, _ in batch)
        x = torch.full((len(batch), width), tokenizer.eos_token_id, dtype=torch.long)
        scored = torch.zeros((len(batch), width - 1), dtype=torch.bool)
        for row, (_, window, targets) in enumerate(batch):
            x[row, :len(window)] = torch.tensor(window)
            scored[row, len(window) - 1 - targets:len(window) - 1] = True
        mask = (torch.arange(width)[None, :] < torch.tensor([len(w) for _, w, _ in batch])[:, None]).long()
        with linear_kernels(onednn):
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.float()
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), x[:, 1:].to(device), reduction="none"
        )  # (B, T-1)
        per_row = (token_nll * scored.to(device)).sum(-1).cpu().numpy()
        for row, (doc, _, _) in enumerate(batch):
            nll[doc] += per_row[row]
    return DocScores(
        nll_nats=nll.tolist(),
        tokens=[len(t) for t in ids],
        bytes=[len(t.encode("utf-8")) for t in texts],
    )


def summarize(split: str, scores: DocScores) -> SplitEval:
    total_nll, tokens, nbytes = sum(scores.nll_nats), sum(scores.tokens), sum(scores.bytes)
    loss = total_nll / max(1, tokens)
    return SplitEval(
        split=split, documents=len(scores.tokens), tokens=tokens, bytes=nbytes,
        loss=loss, perplexity=math.exp(min(loss, 50.0)), bits_per_byte=total_nll / LN2 / max(1, nbytes),
    )


def bits_per_byte(scores: DocScores) -> float:
    return sum(scores.nll_nats) / LN2 / max(1, sum(scores.bytes))


def generate_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> list[Sample]:
    """One completion per prompt and generation setting (greedy, temperature, top-k, top-p...), with its knobs.

    The prompts of one setting are generated as one batch, so a seeded sample is drawn again by
    generating all of ``cfg.sample_prompts`` with its ``params``.
    """
    samples = []
    for setting in cfg.generations:
        params = SampleParams(
            max_new_tokens=cfg.max_new_tokens, do_sample=setting.do_sample, temperature=setting.temperature,
            top_k=setting.top_k, top_p=setting.top_p, repetition_penalty=setting.repetition_penalty, seed=setting.seed,
        )
        outputs = complete(model, tokenizer, cfg.sample_prompts, SamplingParams(**params.model_dump()))
        samples += [Sample(setting=setting.name, params=params, prompt=p, completion=o[0].text)
                    for p, o in zip(cfg.sample_prompts, outputs)]
    return samples


def gate(candidate: DocScores, production: Optional[DocScores], cfg: GateConfig,
         production_version: Optional[int] = None, candidate_version: Optional[int] = None) -> GateDecision:
    """Promote a candidate that beats production by ``min_improvement`` bits/byte with confidence.

    Both models are scored on the same documents; a paired bootstrap over documents gives the
    interval of (candidate - production) bits per byte. With no production model the candidate
    must score at most ``max_bits_per_byte``.
    """
    cand_bpb = bits_per_byte(candidate)
    docs = len(candidate.tokens)
    name = "candidate" if candidate_version is None else f"candidate v{candidate_version}"
    if production is None:
        ok = cand_bpb <= cfg.max_bits_per_byte
        return GateDecision(
            promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
            threshold=cfg.max_bits_per_byte, documents=docs,
            reason=(f"no production model; {name} {cand_bpb:.4f} bits/byte "
                    f"{'meets' if ok else 'misses'} the bound {cfg.max_bits_per_byte}"),
        )
    if len(production.tokens) != docs:
        raise ValueError(f"gate needs both models scored on the same documents ({docs} vs {len(production.tokens)})")
    c, p, b = (np.asarray(v, dtype=float) for v in (candidate.nll_nats, production.nll_nats, candidate.bytes))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, docs, size=(cfg.bootstrap_samples, docs))
    diffs = ((c[idx] - p[idx]).sum(1)) / LN2 / b[idx].sum(1)
    tail = (1 - cfg.confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    prod_bpb = bits_per_byte(production)
    diff = cand_bpb - prod_bpb
    ok = bool(high < -cfg.min_improvement)
    verdict = "beats" if ok else "does not beat"
    return GateDecision(
        promote=ok, candidate_version=candidate_version, candidate_bits_per_byte=cand_bpb,
        production_bits_per_byte=prod_bpb, production_version=production_version, difference=diff, ci_low=float(low), ci_high=float(high),
        threshold=-cfg.min_improvement, documents=docs,
        reason=(f"{name} {cand_bpb:.4f} vs production v{production_version} {prod_bpb:.4f} bits/byte: "
                f"difference {diff:+.4f}, {cfg.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]; "
                f"{verdict} production by the required {cfg.min_improvement} bits/byte"),
    )


def evaluate_run(store: ArtifactStore, run: TrainRef, dataset: DatasetRef, eval_cfg: EvalConfig,
                 gate_cfg: GateConfig, model_name: str, cache_dir: Path,
                 candidate_version: Optional[int] = None, attention: str = "sdpa") -> EvalReport:
    """Score the run's model on validation and test, sample from it, and gate it (as ``candidate_version``)
    against production.

    Production is scored on the candidate's own test documents, so both numbers describe the
    same text (bits per byte stay comparable across tokenizers). ``attention`` is the candidate's
    attention kernel (``model.attention``). Writes ``runs/<id>/eval.json``.
    """
    local = download_run_model(store, run, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(local, attn_implementation=attention).eval()
    tokenizer = AutoTokenizer.from_pretrained(local)
    texts = {s: read_split(store, dataset, s)[:eval_cfg.max_docs] for s in ("validation", "test")}
    scores = {s: score_documents(model, tokenizer, t, eval_cfg.stride, eval_cfg.batch_size) for s, t in texts.items()}
    registry = Registry(store, model_name)
    production_version = registry.alias("production")
    production_scores = None
    if production_version is not None:
        champion = registry.load(production_version, cache_dir=cache_dir)
        production_scores = score_documents(champion.model, champion.tokenizer, texts["test"],
                                            eval_cfg.stride, eval_cfg.batch_size)
    decision = gate(scores["test"], production_scores, gate_cfg, production_version, candidate_version)
    splits = {s: summarize(s, sc) for s, sc in scores.items()}
    samples = generate_samples(model, tokenizer, eval_cfg)
    key = f"runs/{run.run_id}/eval.json"
    body = {
        "run_id": run.run_id, "dataset": dataset.sha256,
        "splits": {s: e.model_dump() for s, e in splits.items()},
        "samples": [s.model_dump() for s in samples], "gate": decision.model_dump(),
        "test_documents": {"candidate": scores["test"].model_dump(),
                           "production": production_scores.model_dump() if production_scores else None},
    }
    sha = store.put_json(key, body)
    return EvalReport(uri=store.uri_for(key), sha256=sha, splits=splits, samples=samples, gate=decision)
