"""The evaluate stage: a run scored on validation and test, sampled, and gated against production."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.config import AdaptConfig, EvalConfig, GateConfig
from llmops.infra.store import ArtifactStore
from llmops.models.data.snapshot import read_split
from llmops.models.evaluation.gate import adaptation_gate, gate
from llmops.models.evaluation.scoring import score_documents, summarize
from llmops.models.model.generation import SamplingParams, complete
from llmops.models.model.loading import download_run_model, load_model
from llmops.models.records import DatasetRef, EvalReport, Sample, SampleParams, TrainRef
from llmops.models.release.registry import Registry


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


def evaluate_run(store: ArtifactStore, run: TrainRef, dataset: DatasetRef, eval_cfg: EvalConfig,
                 gate_cfg: GateConfig, model_name: str, cache_dir: Path,
                 candidate_version: Optional[int] = None, attention: str = "sdpa",
                 adapt: Optional[AdaptConfig] = None) -> EvalReport:
    """Score the run's model on validation and test, sample from it, and gate it (as ``candidate_version``)
    against production.

    Production is scored on the candidate's own test documents, so both numbers describe the
    same text (bits per byte stay comparable across tokenizers). ``attention`` is the candidate's
    attention kernel (``model.attention``). For an adaptation snapshot (``dataset.adaptation``) production
    is scored on the held-out traffic (validation) too and the two-slice gate of ``adapt`` decides.
    Writes ``runs/<id>/eval.json``.
    """
    model, tokenizer = load_model(download_run_model(store, run, cache_dir), attention=attention)
    texts = {s: read_split(store, dataset, s)[:eval_cfg.max_docs] for s in ("validation", "test")}
    scores = {s: score_documents(model, tokenizer, t, eval_cfg.stride, eval_cfg.batch_size) for s, t in texts.items()}
    registry = Registry(store, model_name)
    production_version = registry.alias("production")
    adaptive = dataset.adaptation is not None and production_version is not None
    production_scores = {}
    if production_version is not None:
        champion = registry.load(production_version, cache_dir=cache_dir)
        production_scores = {s: score_documents(champion.model, champion.tokenizer, texts[s], eval_cfg.stride,
                                                eval_cfg.batch_size)
                             for s in (("validation", "test") if adaptive else ("test",))}
    if adaptive:
        decision = adaptation_gate((scores["validation"], production_scores["validation"]),
                                   (scores["test"], production_scores["test"]), gate_cfg, adapt or AdaptConfig(),
                                   production_version, candidate_version)
    else:
        decision = gate(scores["test"], production_scores.get("test"), gate_cfg, production_version,
                        candidate_version)
    splits = {s: summarize(s, sc) for s, sc in scores.items()}
    samples = generate_samples(model, tokenizer, eval_cfg)
    key = f"runs/{run.run_id}/eval.json"
    body = {
        "run_id": run.run_id, "dataset": dataset.sha256,
        "splits": {s: e.model_dump() for s, e in splits.items()},
        "samples": [s.model_dump() for s in samples], "gate": decision.model_dump(),
        "test_documents": {"candidate": scores["test"].model_dump(),
                           "production": production_scores["test"].model_dump() if production_scores else None},
        **({"validation_documents": {"candidate": scores["validation"].model_dump(),
                                     "production": production_scores["validation"].model_dump()}}
           if adaptive else {}),
    }
    sha = store.put_json(key, body)
    return EvalReport(uri=store.uri_for(key), sha256=sha, splits=splits, samples=samples, gate=decision)
