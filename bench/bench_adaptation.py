"""Benchmark: adapting production to a domain shift, warm start vs. a from-scratch retrain at equal wall-clock.

Production is a ``mini`` model trained for ``--base-seconds`` on the standard library's docstrings (ingested from
``builtin://stdlib-docstrings`` with the default PipelineConfig: BPE 4096, blocks of 128, batch 16), registered
as v1 and made production. The traffic then shifts: ``--traffic`` unique Tiny Shakespeare speeches are written
to the store's traffic log as one window. From that window:

* **warm start**: the drift-triggered retrain itself, without Prefect: ``plan_adaptation`` (the window's prompts
  cleaned, a hash-chosen slice held out, the rest mixed with a replay of production's training split; default
  ``AdaptConfig`` with ``adapt.max_minutes`` from ``--adapt-seconds``), then production's own tokenizer, packing and
  ``run_training`` continuing production's weights with ``plan.config``;
* **scratch**: what a full retrain would do with the same data and time: a fresh ``mini`` model and a fresh BPE
  tokenizer trained on the same snapshot's train split (traffic + replay), with the default ``train`` settings and
  the same wall-clock budget (``max_steps`` high enough that the clock stops it).

Production, warm start and scratch are scored (bits per byte, comparable across tokenizers) on three slices:

* **new domain**: ``--new-test`` speeches that are not in the traffic and share no 13-word run with it, so no
  model trained on them;
* **old domain**: production's test split (the adaptation snapshot's ``test`` split), at most ``--max-docs``;
* **held-out traffic**: the adaptation's own held-out slice (its ``validation`` split), at most ``--max-docs``.

Paired bootstrap CIs (95%, over the same documents, ``llmops.models.evaluation.gate.paired_interval``) of
warm - production and warm - scratch on every slice. Targets: the warm start beats scratch on the new domain
(CI high < 0) and stays within ``adapt.max_regression`` of production's bits/byte on the old domain (CI high below
it, the gate's own rule). The adaptation gate's verdict on the warm start (held-out traffic + old test split,
``adaptation_gate``) is reported too.

    python bench/bench_adaptation.py                  # ~7 min on 2 cores: 120 s + 2 x 45 s of training, scoring
    python bench/bench_adaptation.py --quick          # smoke run: 20 s + 2 x 10 s of training, 300 prompts
    python bench/bench_adaptation.py --work /tmp/ad   # keep the store; a rerun with the same settings reuses
                                                      # the trained runs (content-addressed) and only rescores

Writes bench/results/adaptation.json and adaptation.md.
"""
from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from common import RESULTS, SHAKESPEARE, load_average, markdown_table, max_rss_mb, run_meta, timed, write_results

NAME = "bench-adapt"
PRODUCTION_INFO = "bench/production.json"
WINDOW_START = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
ARMS = ("production", "warm_start", "scratch")
SLICES = {"new": "new domain (unseen speeches)", "old": "old domain (production's test split)",
          "held_out": "held-out traffic"}
PAIRS = (("warm_start", "production"), ("warm_start", "scratch"), ("scratch", "production"))


def load_shift(min_chars: int, max_chars: int) -> tuple[list[str], str]:
    """The shift corpus, unique and shuffled (deterministic): Tiny Shakespeare speeches, split at blank lines."""
    if SHAKESPEARE.is_file():
        speeches = [p.strip() for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")]
        name = "tinyshakespeare (speeches)"
    else:
        from llmops.models.data.corpus import stdlib_code

        speeches, name = [d.text.strip() for d in stdlib_code()], f"stdlib code ({SHAKESPEARE} absent)"
    texts = [t for t in dict.fromkeys(speeches) if min_chars <= len(t) <= max_chars]
    random.Random(1).shuffle(texts)
    return texts, name


def split_shift(texts: list[str], traffic: int, new_test: int, ngram: int) -> tuple[list[str], list[str]]:
    """(traffic prompts, new-domain test texts): the test texts come first in the shuffled order (the same set
    whatever ``traffic`` is) and keep only those sharing no ``ngram``-word run with any traffic prompt."""
    from llmops.models.data.leakage import OverlapIndex

    pool = texts[:2 * new_test]  # spare texts for the ones dropped as overlapping the traffic
    prompts = texts[2 * new_test:2 * new_test + traffic]
    if len(prompts) < traffic:
        raise SystemExit(f"the shift corpus has {len(texts)} texts: not enough for {traffic} prompts and a test set "
                         f"of {new_test}; lower --traffic or --new-test")
    seen = OverlapIndex(prompts, ngram)
    return prompts, [t for t in pool if not seen.overlaps(t)][:new_test]


def base_config(args: argparse.Namespace):
    """The default pipeline on stdlib docstrings, clock-bound (``max_steps`` out of the way) on the CPU."""
    from llmops.infra.config import PipelineConfig

    cfg = PipelineConfig()
    return cfg.model_copy(update={
        "model_name": NAME,
        "data": cfg.data.model_copy(update={"sources": ["builtin://stdlib-docstrings"]}),
        "train": cfg.train.model_copy(update={"max_minutes": args.base_seconds / 60, "time_budget_s": None,
                                              "max_steps": 1_000_000, "device": "cpu"}),
        "compress": cfg.compress.model_copy(update={"variants": []}),
        "adapt": cfg.adapt.model_copy(update={"max_minutes": args.adapt_seconds / 60}),
    }).with_overrides(args.set)


def train_arm(store, config, dataset, cache: Path) -> tuple[Any, Any, dict]:
    """Tokenizer (trained, or a pretrained base's own), packing and training as the pipeline's stages do them:
    (tokenizer ref, train ref, what it cost)."""
    from llmops.models.data import build_tokenizer, load_tokenizer, pack_dataset, read_split
    from llmops.models.model import tokenizer_config_for
    from llmops.models.training import run_training

    t0 = time.perf_counter()
    tok_cfg = tokenizer_config_for(config.tokenizer, config.model)
    texts = read_split(store, dataset, "train") if tok_cfg.kind == "bpe" else []
    tok_ref = build_tokenizer(store, tok_cfg, dataset, texts)
    tokenizer = load_tokenizer(store, tok_ref, cache)
    splits = {s: read_split(store, dataset, s) for s in ("train", "validation")}
    packed = pack_dataset(store, dataset, tok_ref, splits, tokenizer, config.train.block_size,
                          config.tokenizer.num_proc, config.train.batching)
    t1 = time.perf_counter()
    run = run_training(store, packed, tok_ref, tokenizer, config.model, config.train, cache)
    t2 = time.perf_counter()
    info = {"run_id": run.run_id, "method": run.method, "tokenizer": f"{tok_ref.kind} {tok_ref.vocab_size}",
            "train_tokens_packed": packed.tokens["train"], "lr": config.train.lr,
            "warmup_steps": config.train.warmup_steps, "budget_s": config.train.budget_s,
            "max_steps": config.train.max_steps, "steps": run.steps, "tokens_seen": run.tokens_seen,
            "train_wall_s": run.wall_s, "final_train_loss": round(run.final_train_loss, 4),
            "final_val_loss": None if run.final_val_loss is None else round(run.final_val_loss, 4),
            "tokenize_pack_s": round(t1 - t0, 1), "run_training_s": round(t2 - t1, 1)}
    return tok_ref, run, info


def ensure_production(store, cfg, cache: Path) -> tuple[Any, dict]:
    """v1 = a model trained on the docstrings, registered (its gate and card as the pipeline writes them) and
    made production; reused when the store already has one. Returns (its dataset, its training record)."""
    from llmops.models.data import ingest, load_ref
    from llmops.models.evaluation import evaluate_run
    from llmops.models.release import Registry, register_candidate

    registry = Registry(store, cfg.model_name)
    version = registry.alias("production")
    if version is not None:
        metadata = registry.manifest(version).metadata
        info = store.get_json(PRODUCTION_INFO)
        print(f"reusing production v{version} ({metadata.run_id}) from the work store", flush=True)
        return load_ref(store, metadata.dataset), info
    print(f"production: ingesting stdlib docstrings, training a mini model for {cfg.train.budget_s:.0f} s...",
          flush=True)
    dataset, ingest_s = timed(ingest, cfg.data, store, model_name=cfg.model_name, cache_dir=cache)
    tok_ref, run, info = train_arm(store, cfg, dataset, cache)
    info["ingest_s"] = round(ingest_s, 1)
    info["dataset_records"] = {s: r.records for s, r in dataset.splits.items()}
    version = registry.claim_version()
    evaluation = evaluate_run(store, run, dataset, cfg.eval, cfg.gate, cfg.model_name, cache,
                              candidate_version=version, attention=cfg.model.attention, adapt=cfg.adapt)
    register_candidate(store, cfg, version=version, dataset=dataset, tokenizer=tok_ref, run=run,
                       evaluation=evaluation, compression=None, reference_profile=None, cache_dir=cache)
    # the bench's premise, whatever the first-model gate's bound says about a short run
    registry.set_alias("production", version, "bench: the model the traffic drifts away from")
    store.put_json(PRODUCTION_INFO, info)  # how it was trained, for a rerun on the same --work
    return dataset, info


def ensure_traffic(store, prompts: list[str]) -> tuple[datetime, datetime]:
    """The window [start, end) holding one traffic record per prompt, one a second (written once per store)."""
    from llmops.infra.traffic.log import read_window, write_records
    from llmops.monitoring.synthetic import synthetic_records

    start, end = WINDOW_START, WINDOW_START + timedelta(seconds=len(prompts) + 1)
    existing = read_window(store, NAME, start, end)
    if not existing:
        records = synthetic_records(len(prompts), seed=1, start=start, spacing_s=1, model=NAME)
        write_records(store, NAME, [{**r, "prompt": p} for r, p in zip(records, prompts)])
    elif [r.get("prompt") for r in existing] != prompts:
        raise SystemExit("the work store holds another traffic window (different --traffic?): use a fresh --work")
    return start, end


def score_arms(models: dict[str, Path], slices: dict[str, list[str]], eval_cfg) -> dict[str, dict[str, Any]]:
    """Per model and slice, the per-document scores (DocScores), one model in memory at a time."""
    from llmops.models.evaluation import score_documents
    from llmops.models.model.loading import load_model

    scores: dict[str, dict[str, Any]] = {}
    for arm, folder in models.items():
        model, tokenizer = load_model(folder)
        t0 = time.perf_counter()
        scores[arm] = {s: score_documents(model, tokenizer, texts, eval_cfg.stride, eval_cfg.batch_size)
                       for s, texts in slices.items()}
        print(f"scored {arm} on {sum(map(len, slices.values()))} documents in {time.perf_counter() - t0:.1f} s",
              flush=True)
        del model
    return scores


def compare(scores: dict[str, dict[str, Any]], gate_cfg, adapt) -> tuple[dict, list[dict], dict, dict]:
    """(bits/byte per arm and slice, paired differences, targets, the adaptation gate's decision)."""
    from llmops.models.evaluation import bits_per_byte
    from llmops.models.evaluation.gate import adaptation_gate, paired_interval

    bpb = {arm: {s: round(bits_per_byte(sc), 4) for s, sc in per.items()} for arm, per in scores.items()}
    rows = []
    for a, b in PAIRS:
        for s in SLICES:
            diff, low, high = paired_interval(scores[a][s], scores[b][s], gate_cfg)
            rows.append({"pair": f"{a} - {b}", "slice": s, "documents": len(scores[a][s].tokens),
                         "difference": round(diff, 4), "ci_low": round(low, 4), "ci_high": round(high, 4)})
    by = {(r["pair"], r["slice"]): r for r in rows}
    vs_scratch = by[("warm_start - scratch", "new")]
    old = by[("warm_start - production", "old")]
    margin = adapt.max_regression * bits_per_byte(scores["production"]["old"])
    targets = {
        "warm_beats_scratch_on_new_domain": {
            "met": vs_scratch["ci_high"] < 0, "rule": "CI high of warm_start - scratch on the new domain < 0",
            "ci_high": vs_scratch["ci_high"]},
        "warm_within_margin_on_old_domain": {
            "met": old["ci_high"] < margin,
            "rule": f"CI high of warm_start - production on the old domain < adapt.max_regression "
                    f"({adapt.max_regression}) x production's {bpb['production']['old']} bits/byte",
            "ci_high": old["ci_high"], "limit": round(margin, 4)},
    }
    decision = adaptation_gate((scores["warm_start"]["held_out"], scores["production"]["held_out"]),
                               (scores["warm_start"]["old"], scores["production"]["old"]), gate_cfg, adapt, 1, 2)
    gate = {"promote": decision.promote, "reason": decision.reason}
    return bpb, rows, targets, gate


def markdown(meta: dict, arms: dict, bpb: dict, rows: list[dict], targets: dict, gate: dict) -> str:
    a = meta["adaptation"]
    bpb_table = markdown_table(
        ["model", *(f"{SLICES[s]} bits/byte" for s in SLICES), "method", "tokenizer", "steps", "tokens seen",
         "train s", "train data tokens"],
        [[arm, *(bpb[arm][s] for s in SLICES), arms[arm]["method"], arms[arm]["tokenizer"], arms[arm]["steps"],
          f"{arms[arm]['tokens_seen']:,}", arms[arm]["train_wall_s"], f"{arms[arm]['train_tokens_packed']:,}"]
         for arm in ARMS])
    diff_table = markdown_table(
        ["difference (bits/byte)", "slice", "documents", "difference", "95% CI"],
        [[r["pair"], SLICES[r["slice"]], r["documents"], f"{r['difference']:+.4f}",
          f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"] for r in rows])

    def verdict(key: str) -> str:
        t = targets[key]
        return f"{'met' if t['met'] else 'MISSED'} ({t['rule']}: {t['ci_high']:+.4f}" + \
            (f" vs {t['limit']:.4f})" if "limit" in t else ")")

    return "\n".join([
        f"# Adaptation to a domain shift: stdlib docstrings -> {meta['shift_corpus']}", "",
        f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}), torch {meta['torch']} "
        f"({meta['torch_threads']} threads), load average at start / end {meta['load_start']} / {meta['load_end']}",
        "",
        f"Production (v1): a `mini` model trained {meta['base_seconds']:.0f} s on stdlib docstrings "
        f"({arms['production']['steps']} steps). Traffic window: {meta['traffic']} unique speeches "
        f"({a['holdout']} held out, {a['traffic_train']} trained on after {a['holdout_overlap']} overlapping the "
        f"held-out ones were dropped, plus {a['replay']} replayed docstrings; traffic_share "
        f"{meta['adapt']['traffic_share']}). **warm_start**: the drift retrain (`plan_adaptation` + production's "
        f"tokenizer + `run_training`, lr {arms['warm_start']['lr']}, warmup {arms['warm_start']['warmup_steps']}); "
        f"**scratch**: a fresh `mini` model and BPE tokenizer on the same train split with the default train "
        f"settings (lr {arms['scratch']['lr']}); both with a {meta['adapt_seconds']:.0f} s training budget "
        f"(`train s` is the loop's own clock; tokenizer, packing, preflight and kernel calibration are outside "
        f"it for both). New domain: {meta['new_test']} speeches outside the traffic (no shared "
        f"{meta['adapt']['leakage_ngram']}-word run). Bits per byte are comparable across tokenizers.", "",
        bpb_table, "",
        "Paired differences over the same documents (negative: the first model is better), 95% bootstrap CI:", "",
        diff_table, "",
        "Targets:", "",
        f"- warm start beats from-scratch on the new domain: {verdict('warm_beats_scratch_on_new_domain')}",
        f"- warm start within the margin on the old domain: {verdict('warm_within_margin_on_old_domain')}",
        f"- the adaptation gate on the warm start (held-out traffic must improve, old test split within "
        f"max_regression): {'promote' if gate['promote'] else 'reject'}: {gate['reason']}", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-seconds", type=float, default=120.0, help="production's training budget")
    parser.add_argument("--adapt-seconds", type=float, default=45.0,
                        help="training budget of the warm start and of the from-scratch retrain (adapt.max_minutes)")
    parser.add_argument("--traffic", type=int, default=1000, help="speeches in the drifted traffic window")
    parser.add_argument("--new-test", type=int, default=300, help="new-domain test speeches (never in the traffic)")
    parser.add_argument("--max-docs", type=int, help="old-domain and held-out documents scored at most "
                                                     "(default: eval.max_docs, as the gate scores them)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="configuration override, e.g. --set adapt.lr=3e-3 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s + 10 s budgets, 300 prompts, 150 tests")
    parser.add_argument("--work", type=Path, help="folder for the store and cache (default: a fresh temp dir)")
    parser.add_argument("--out", type=Path,
                        help="results path without suffix (default: bench/results/adaptation; with --quick: "
                             "<work>/adaptation, so a smoke run never replaces the real results)")
    args = parser.parse_args()
    if args.quick:
        args.base_seconds, args.adapt_seconds, args.traffic, args.new_test = 20.0, 10.0, 300, 150
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch
    import transformers

    from llmops.infra.store import LocalStore
    from llmops.models.data import read_split
    from llmops.models.model.loading import download_run_model
    from llmops.models.release import Registry
    from llmops.tasks.core.adaptation import plan_adaptation

    load_start = load_average()
    t_start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-adaptation-"))
    out = args.out or (work / "adaptation" if args.quick else RESULTS / "adaptation")
    store, cache = LocalStore(work / "store"), work / "cache"
    cfg = base_config(args)
    max_docs = args.max_docs or cfg.eval.max_docs
    texts, shift_name = load_shift(cfg.data.min_chars, cfg.serve.max_prompt_chars)
    prompts, new_test = split_shift(texts, args.traffic, args.new_test, cfg.adapt.leakage_ngram)
    print(f"work dir {work}; shift corpus {shift_name}: {len(prompts)} traffic prompts, {len(new_test)} new-domain "
          f"test texts", flush=True)

    base_dataset, production = ensure_production(store, cfg, cache)
    start, end = ensure_traffic(store, prompts)
    (plan, why), plan_s = timed(plan_adaptation, store, cfg, start, end, cache)
    if plan is None:
        raise SystemExit(f"no adaptation plan: {why}")
    print(f"adaptation ({plan_s:.1f} s): {why}", flush=True)
    print(f"warm start: continuing v1 for {plan.config.train.budget_s:.0f} s...", flush=True)
    _, warm_run, warm = train_arm(store, plan.config, plan.dataset, cache)
    scratch_train = cfg.train.model_copy(update={"max_minutes": args.adapt_seconds / 60})
    scratch_cfg = cfg.model_copy(update={"train": scratch_train})
    print(f"scratch: a fresh mini model and tokenizer on the same data for {scratch_cfg.train.budget_s:.0f} s...",
          flush=True)
    _, scratch_run, scratch = train_arm(store, scratch_cfg, plan.dataset, cache)
    arms = {"production": production, "warm_start": warm, "scratch": scratch}

    slices = {"new": new_test, "old": read_split(store, plan.dataset, "test")[:max_docs],
              "held_out": read_split(store, plan.dataset, "validation")[:max_docs]}
    folders = {"production": Registry(store, NAME).download(1, cache),
               "warm_start": download_run_model(store, warm_run, cache),
               "scratch": download_run_model(store, scratch_run, cache)}
    t_score = time.perf_counter()
    scores = score_arms(folders, slices, cfg.eval)
    score_s = time.perf_counter() - t_score
    bpb, rows, targets, gate = compare(scores, cfg.gate, plan.config.adapt)

    meta = run_meta(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads(), load_start=load_start, load_end=load_average(),
                    work=str(work), shift_corpus=shift_name, base_seconds=args.base_seconds,
                    adapt_seconds=args.adapt_seconds, traffic=len(prompts), new_test=len(new_test),
                    max_docs=max_docs, slices={s: len(t) for s, t in slices.items()},
                    adaptation=plan.dataset.adaptation.model_dump(mode="json", exclude={"base_dataset"}),
                    adapt=plan.config.adapt.model_dump(mode="json"), dataset=plan.dataset.uri,
                    base_dataset=base_dataset.uri, plan_s=round(plan_s, 1), score_s=round(score_s, 1),
                    total_s=round(time.perf_counter() - t_start, 1), max_rss_mb=round(max_rss_mb()))
    payload = {"meta": meta, "arms": arms, "bits_per_byte": bpb, "differences": rows, "targets": targets,
               "adaptation_gate": gate}
    md = markdown(meta, arms, bpb, rows, targets, gate)
    write_results(out.name, payload, md, out.parent)
    print()
    print(md)
    print(f"total {meta['total_s']:.0f} s; wrote {out}.json and .md", flush=True)


if __name__ == "__main__":
    main()
