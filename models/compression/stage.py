"""The compress stage: each precision variant of a run's model measured beside fp32 in the same run, and kept as
a serving candidate only when it is faster, smaller and within the parity gate."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.config import CompressConfig, GateConfig
from llmops.infra.store import ArtifactStore
from llmops.models.compression.measure import decode_tokens_per_s, distribution_parity
from llmops.models.evaluation.gate import paired_interval
from llmops.models.evaluation.scoring import bits_per_byte, score_documents
from llmops.models.model.loading import download_run_model, load_model
from llmops.models.model.variants import make_variant, save_variant
from llmops.models.records import CompressionReport, DocScores, TrainRef, VariantReport

log = logging.getLogger("llmops.compression")

BATCHES = (1, 8)


@dataclass
class Parent:
    """The fp32 model variants are measured against, with what is measured of it once (scores on first need)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    texts: Sequence[str]
    bytes: int
    speed: dict[int, float]
    stride: Optional[int] = None
    scores: Optional[DocScores] = None

    def scored(self) -> DocScores:
        if self.scores is None:
            self.scores = score_documents(self.model, self.tokenizer, self.texts, self.stride)
        return self.scores


def compress_run(store: ArtifactStore, run: TrainRef, texts: Sequence[str], cfg: CompressConfig,
                 cache_dir: Path, stride: Optional[int] = None) -> Optional[CompressionReport]:
    """Make every variant in ``cfg.variants``, measure it beside fp32, and store it under ``runs/<id>/variants/``.

    Returns None when ``cfg.variants`` is empty. Each variant is saved, loaded back as every consumer loads it,
    and judged by :func:`assess`.
    """
    if not cfg.variants:
        return None
    model_dir = download_run_model(store, run, cache_dir)
    model, tokenizer = load_model(model_dir)
    parent = Parent(model, tokenizer, texts, (model_dir / "model.safetensors").stat().st_size,
                    speeds(model, tokenizer, texts, cfg), stride)
    reports = []
    for name in cfg.variants:
        folder = Path(cache_dir) / "runs" / run.run_id / "variants" / name
        weights = save_variant(make_variant(model, name), name, folder)
        vmodel, _ = load_model(model_dir, name, variant_dir=folder)
        prefix = f"runs/{run.run_id}/variants/{name}"
        hashes = store.upload_dir(folder, prefix)
        reports.append(assess(name, vmodel, parent, cfg, uri=store.uri_for(prefix), sha256=hashes[weights.name],
                              size=weights.stat().st_size))
        log.info("%s: %s", name, "servable" if reports[-1].servable else "; ".join(reports[-1].reasons))
    servable = [r for r in reports if r.servable]
    return CompressionReport(
        parent_bytes=parent.bytes, parent_tokens_per_s=parent.speed,
        parent_bits_per_byte=bits_per_byte(parent.scores) if parent.scores else None, documents=len(texts),
        variants=reports, serve=max(servable, key=lambda r: r.tokens_per_s[1]).variant if servable else "fp32",
    )


def speeds(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
           cfg: CompressConfig) -> dict[int, float]:
    """Greedy decode tokens/s at each batch size the gate compares."""
    return {b: decode_tokens_per_s(model, tokenizer, texts, b, cfg.decode_tokens, cfg.speed_runs) for b in BATCHES}


def assess(name: str, vmodel: PreTrainedModel, parent: Parent, cfg: CompressConfig, *, uri: str, sha256: str,
           size: int) -> VariantReport:
    """Measure one variant beside its parent and decide whether it may serve.

    Speed first: a variant that is not faster at batch 1 and 8 (with ``cfg.require_faster``) is out without
    spending the scoring on it. Then parity: the paired bootstrap interval of the bits/byte increase on the
    parent's documents, whose upper end must stay within ``cfg.max_relative_bpb_increase`` of the parent's
    bits/byte; mean KL and top-1 agreement are reported beside it. It must also be smaller on disk.
    """
    speed = speeds(vmodel, parent.tokenizer, parent.texts, cfg)
    faster = all(speed[b] > parent.speed[b] for b in BATCHES)
    quality = _parity(vmodel, parent, cfg) if faster or not cfg.require_faster else {}
    return _report(name, uri, sha256, size, parent, speed, faster, quality, cfg)


def _parity(variant: PreTrainedModel, parent: Parent, cfg: CompressConfig) -> dict:
    scores = score_documents(variant, parent.tokenizer, parent.texts, parent.stride)
    gate_cfg = GateConfig(confidence=cfg.confidence, bootstrap_samples=cfg.bootstrap_samples)
    diff, low, high = paired_interval(scores, parent.scored(), gate_cfg)
    kl, top1 = distribution_parity(parent.model, variant, parent.tokenizer, parent.texts)
    return dict(bits_per_byte=bits_per_byte(scores), bpb_increase=diff, ci_low=low, ci_high=high,
                relative_increase_high=high / bits_per_byte(parent.scored()), mean_kl=kl, top1_agreement=top1)


def _report(name: str, uri: str, sha256: str, size: int, parent: Parent, speed: dict[int, float], faster: bool,
            quality: dict, cfg: CompressConfig) -> VariantReport:
    reasons = []
    if not faster and cfg.require_faster:
        reasons.append("slower than fp32: " + ", ".join(
            f"batch {b} {speed[b]:.1f} vs {parent.speed[b]:.1f} tokens/s" for b in BATCHES))
    smaller = size < parent.bytes
    if not smaller:
        reasons.append(f"not smaller on disk: {size:,} vs {parent.bytes:,} bytes")
    parity = None
    if quality:
        parity = quality["relative_increase_high"] <= cfg.max_relative_bpb_increase
        if not parity:
            reasons.append(f"bits/byte {quality['bpb_increase']:+.4f} ({cfg.confidence:.0%} CI up to "
                           f"{quality['relative_increase_high']:+.2%} of fp32) exceeds the "
                           f"+{cfg.max_relative_bpb_increase:.2%} parity limit")
    servable = parity is True and smaller and (faster or not cfg.require_faster)
    return VariantReport(variant=name, uri=uri, sha256=sha256, bytes=size, tokens_per_s=speed, **quality,
                         faster=faster, smaller=smaller, parity=parity, servable=servable,
                         reasons=[] if servable else reasons)
