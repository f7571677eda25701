"""Benchmark: drift detection quality on real text, with a model trained by the project's own code.

A ``mini`` model is trained (time budget ``--train-seconds``) on part of the standard library's
docstrings, or loaded with ``--model-path``. The reference profile is built from held-out
docstrings scored by that model with the server's default sampling (``llmops.tasks.core.monitoring.serving_params``)
through ``llmops.models.model.reference.reference_records``, and ``build_profile`` with the default
``MonitorConfig``. Every window goes through the same scoring code and ``check_window``:

* ``--no-drift`` windows of held-out docstrings (target: no alert at all);
* a 100% shift window of Tiny Shakespeare speeches (target: alert);
* mixes of 0/5/10/25/50% Shakespeare into docstrings (target: alert at 10%, report 5%).

Scoring a record costs a generation, so a pool of ``--pool`` held-out docstrings (none of them in the reference
or the training data) and one window of speeches are scored once, and every window is a seeded draw without
replacement from them: two no-drift windows may share records, a window never shares one with the reference.

    python bench/bench_detection.py                        # train (~75 s), score (~4 min), check: ~8 min on 2 cores
    python bench/bench_detection.py --model-path DIR       # reuse a saved model folder
    python bench/bench_detection.py --cache /tmp/det       # cache the model and scored records between runs

Writes bench/results/drift_detection.json and drift_detection.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

from common import RESULTS, SHAKESPEARE, markdown_table, run_meta, write_results

MIX_LEVELS = (0.0, 0.05, 0.10, 0.25, 0.50)


def load_texts(max_chars: int) -> tuple[list[str], list[str], str]:
    """(docstrings, shift passages, name of the shift corpus): shuffled, deterministic."""
    from llmops.models.data.corpus import stdlib_code, stdlib_docstrings

    docs = [d.text.strip() for d in stdlib_docstrings()]
    docs = [d for d in dict.fromkeys(docs) if d and len(d) <= max_chars]  # unique: no document in two windows
    if SHAKESPEARE.is_file():
        speeches = [p.strip() for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")]
        shift, name = [p for p in dict.fromkeys(speeches) if p and len(p) <= max_chars], "tinyshakespeare (speeches)"
    else:
        shift = [d.text.strip() for d in stdlib_code() if d.text.strip() and len(d.text) <= max_chars]
        name = f"stdlib code ({SHAKESPEARE} absent)"
    random.Random(0).shuffle(docs)
    random.Random(1).shuffle(shift)
    return docs, shift, name


def train_model(texts: list[str], seconds: float, out: Path):
    """Train a ``mini`` model with the project's tokenizer, packing and training loop; save it to ``out``."""
    from llmops.infra.config import TokenizerConfig, TrainConfig
    from llmops.infra.store import LocalStore
    from llmops.models.data.packing import pack_split
    from llmops.models.data.tokenizer import train_bpe
    from llmops.models.model.presets import build_config
    from llmops.models.training.checkpoint import Checkpointer
    from llmops.models.training.loop import train
    from llmops.models.training.setup import build_model

    cfg = TrainConfig(max_minutes=seconds / 60, max_steps=100_000, device="cpu", eval_every=200,
                      checkpoint_every=10_000, num_threads=1)
    cut = int(len(texts) * 0.95)
    tokenizer = train_bpe(texts[:cut], TokenizerConfig().vocab_size)
    train_blocks, val_blocks = (pack_split(part, tokenizer, cfg.block_size) for part in (texts[:cut], texts[cut:]))
    config = build_config("mini", vocab_size=len(tokenizer), context_length=cfg.block_size,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(build_model(config, cfg.seed), train_blocks, val_blocks, cfg,
                        Checkpointer(LocalStore(Path(tmp) / "store"), "runs/bench/checkpoints"),
                        Path(tmp) / "metrics.jsonl")
    model = outcome.model.cpu().eval()
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"docs": len(texts), "steps": outcome.state.step, "train_loss": outcome.final_train_loss,
            "val_loss": outcome.state.last_val_loss, "train_s": round(outcome.state.elapsed_s, 1)}
    (out / "bench_training.json").write_text(json.dumps(info, indent=2))
    return info


def score(model, tokenizer, texts: list[str], cache: Path | None) -> list[dict]:
    """Traffic records of ``texts`` from the served model's own code, as a server with default params captures them."""
    import torch

    from llmops.infra.config import PipelineConfig
    from llmops.models.model.reference import reference_records
    from llmops.tasks.core.monitoring import serving_params

    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache / f"records-{digest}.jsonl" if cache is not None else None
    if path is not None and path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # Sampling seeded by the texts: reproducible, and every window draws its own sampling noise (one seed
    # for all windows would make their completions deviate from the reference's together).
    torch.manual_seed(int(digest, 16) % 2**63)
    records = reference_records(model, tokenizer, texts, params=serving_params(PipelineConfig()),
                                model_name="bench", version=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def plan_corpora(docs: list[str], shift: list[str], reference_size: int, pool: int, size: int):
    """(reference texts, held-out docstring pool, shift texts, training texts): disjoint slices of the corpora."""
    if reference_size + pool + 100 > len(docs):
        raise SystemExit(f"{len(docs)} docstrings cannot hold a reference of {reference_size}, a pool of {pool} "
                         f"and training data: lower --pool")
    return docs[:reference_size], docs[reference_size:reference_size + pool], shift[:size], \
        docs[reference_size + pool:]


def plan_windows(pool: list, shift: list, size: int, no_drift: int) -> list[tuple[str, float, list]]:
    """[(kind, shift share, records)]: seeded draws without replacement from the scored pool and shift records."""
    rng = random.Random(0)
    windows = [("no_drift", 0.0, rng.sample(pool, size)) for _ in range(no_drift)]
    windows.append(("shift", 1.0, list(shift)))
    for level in MIX_LEVELS:
        n_shift = round(level * size)
        mixed = rng.sample(pool, size - n_shift) + rng.sample(shift, n_shift)
        rng.shuffle(mixed)
        windows.append(("mix", level, mixed))
    return windows


def window_row(kind: str, level: float, report) -> dict:
    return {
        "kind": kind, "shift_share": level, "n": report.n_samples, "verdict": report.verdict,
        "severity": report.severity, "alerting": report.alerting, "warning": report.warning,
        "psi": {n: round(s.psi, 4) for n, s in report.signals.items()},
        "psi_effect": {n: round(s.psi_effect, 4) for n, s in report.signals.items()},
        "p_adjusted": {n: s.p_adjusted for n, s in report.signals.items()},
        "classifier": None if report.classifier is None else {
            k: getattr(report.classifier, k) for k in ("status", "auc", "new_share", "p_value", "p_adjusted",
                                                       "seconds")} | {
            "window_ngrams": [w.ngram for w in report.classifier.current_ngrams[:5]]},
    }


def summarize(rows: list[dict]) -> dict:
    """False-alarm and warn rates of the no-drift windows, detection of the shift, the first mix level that alerts."""
    quiet = [r for r in rows if r["kind"] == "no_drift"]
    shift = next(r for r in rows if r["kind"] == "shift")
    mixes = [r for r in rows if r["kind"] == "mix"]
    first = next((r["shift_share"] for r in mixes if r["verdict"] == "alert"), None)
    by_level = {r["shift_share"]: r for r in mixes}
    cost = [r["classifier"]["seconds"] for r in rows if r["classifier"]]
    false_alarms = [r for r in quiet if r["verdict"] == "alert"]
    return {
        "no_drift_windows": len(quiet), "false_alarms": len(false_alarms),
        "false_alarm_rate": len(false_alarms) / len(quiet),
        "warn_rate": sum(r["verdict"] == "warn" for r in quiet) / len(quiet),
        "false_alarm_signals": sorted({s for r in false_alarms for s in r["alerting"]}),
        "warning_signals": sorted({s for r in quiet for s in r["warning"]}),
        "shift_detected_first_window": shift["verdict"] == "alert", "shift_alerting": shift["alerting"],
        "first_mix_level_alerting": first,
        "verdict_at_5pct": by_level[0.05]["verdict"], "verdict_at_10pct": by_level[0.10]["verdict"],
        "classifier_seconds_per_window": round(sum(cost) / len(cost), 2) if cost else None,
        "targets_met": {"no_false_alarm": not false_alarms and len(quiet) >= 20,
                        "shift_alerts": shift["verdict"] == "alert",
                        "mix_alerts_at_10pct": first is not None and first <= 0.10},
    }


def markdown(meta: dict, summary: dict, rows: list[dict], signals: list[str]) -> str:
    """The results page: targets, then one row per window with PSI per signal (* alert, + warn)."""
    def cell(row, name):
        mark = "*" if name in row["alerting"] else "+" if name in row["warning"] else ""
        return f"{row['psi'][name]:.3f}{mark}" if name in row["psi"] else "-"

    def classifier(row):
        c = row["classifier"]
        mark = {"alert": "*", "warn": "+"}.get(c["status"], "") if c else ""
        return f"{c['auc']:.3f} / {c['new_share']:.1%}{mark}" if c else "-"

    table = markdown_table(
        ["window", "shift share", "n", "verdict", "severity", "classifier AUC / new share", *signals],
        [[f"{r['kind']} {i}", f"{r['shift_share']:.0%}", r["n"], r["verdict"], r["severity"], classifier(r),
          *(cell(r, s) for s in signals)]
         for i, r in enumerate(rows)])
    targets = summary["targets_met"]
    return "\n".join([
        "# Drift detection on real text: stdlib docstrings vs " + meta["shift_corpus"], "",
        f"Model: `mini` trained on held-in docstrings ({meta['training']}); reference: "
        f"{meta['reference_records']} held-out docstrings (fit half {meta['fit_records']}, counted half "
        f"{meta['count_records']}); windows of {meta['window']} prompts drawn from a pool of {meta['pool']} other "
        f"held-out docstrings (no-drift windows may share records with each other, never with the reference); "
        f"default MonitorConfig. "
        f"Command: `{meta['command']}`.", "",
        f"- no-drift windows: {summary['no_drift_windows']}, false alarms: {summary['false_alarms']} "
        f"(rate {summary['false_alarm_rate']:.0%}; target 0: {'met' if targets['no_false_alarm'] else 'MISSED'}), "
        f"warn rate {summary['warn_rate']:.0%} (warning signals: {', '.join(summary['warning_signals']) or 'none'})",
        f"- 100% shift, first window: {'alert' if summary['shift_detected_first_window'] else 'NOT DETECTED'} "
        f"({', '.join(summary['shift_alerting'])})",
        f"- gradual mix: first level alerting {summary['first_mix_level_alerting']} "
        f"(target <= 10%: {'met' if targets['mix_alerts_at_10pct'] else 'MISSED'}); at 5%: "
        f"{summary['verdict_at_5pct']}, at 10%: {summary['verdict_at_10pct']}",
        f"- domain classifier: {summary['classifier_seconds_per_window']} s per window (fit and score on "
        f"{meta['window']} window and {meta['reference_records']} reference prompts)", "",
        "PSI per signal and window (`*` alert, `+` warn); the domain classifier's held-out AUC and the least share "
        "of the window it finds new:", "", table, "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="a saved model folder (config.json + tokenizer) to reuse")
    parser.add_argument("--train-seconds", type=float, default=75.0)
    parser.add_argument("--window", type=int, default=1000, help="prompts per window")
    parser.add_argument("--no-drift", type=int, default=20, help="no-drift windows")
    parser.add_argument("--pool", type=int, default=3000, help="held-out docstrings the windows are drawn from")
    parser.add_argument("--cache", type=Path,
                        help="folder for the trained model and scored records, reused by later runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_detection")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # One thread: on a shared 2-vCPU machine torch's two-thread barriers made scoring 15x slower (measured).
    torch.set_num_threads(1)

    from llmops.infra.config import MonitorConfig, PipelineConfig
    from llmops.monitoring.check import check_window
    from llmops.monitoring.profile import build_profile
    from llmops.tasks.core.monitoring import tokenize_with

    cfg = MonitorConfig(evidently_report=False)  # the default policy; Evidently's companion report is not a verdict
    docs, shift, shift_name = load_texts(PipelineConfig().serve.max_prompt_chars)
    reference, pool, shift, train_docs = plan_corpora(docs, shift, cfg.reference_size, args.pool, args.window)
    t0 = time.perf_counter()
    model_path, training = args.model_path, None
    if model_path is None:
        model_path = (args.cache or Path(tempfile.mkdtemp(prefix="bench-detection-"))) / "model"
        if (model_path / "config.json").is_file():
            training = json.loads((model_path / "bench_training.json").read_text())
        else:
            print(f"training a mini model on {len(train_docs)} docstrings for {args.train_seconds:.0f} s...",
                  flush=True)
            training = train_model(train_docs, args.train_seconds, model_path)
    model, tokenizer = (AutoModelForCausalLM.from_pretrained(model_path).eval(),
                        AutoTokenizer.from_pretrained(model_path))
    t1 = time.perf_counter()
    print(f"scoring {len(reference)} reference, {len(pool)} pool and {len(shift)} shift prompts...", flush=True)
    reference_records = score(model, tokenizer, reference, args.cache)
    window_records = plan_windows(score(model, tokenizer, pool, args.cache), score(model, tokenizer, shift, args.cache),
                                  args.window, args.no_drift)
    t2 = time.perf_counter()
    tokenize = tokenize_with(tokenizer)
    profile = build_profile(reference_records, tokenize, cfg, model_name="bench", model_version=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, level, records) in enumerate(window_records):
            report = check_window(profile, records, tokenize, cfg, Path(tmp) / f"w{i}", window_id=f"{kind}-{i}")
            rows.append(window_row(kind, level, report))
            print(f"{kind:8s} {level:4.0%}: {report.verdict:5s} alerting={report.alerting} warning={report.warning}",
                  flush=True)
    summary = summarize(rows)
    meta = run_meta(model_path=str(model_path), training=training, shift_corpus=shift_name, window=args.window,
                    pool=len(pool),
                    reference_records=len(reference_records), fit_records=profile.fit_records,
                    count_records=profile.count_records, common_tokens=len(profile.common_tokens),
                    token_design_effect=profile.categorical["token_frequency"].design_effect,
                    model_s=round(t1 - t0, 1), scoring_s=round(t2 - t1, 1), check_s=round(time.perf_counter() - t2, 1),
                    config=cfg.model_dump(mode="json"))
    write_results(args.out.name, {"meta": meta, "summary": summary, "windows": rows},
                  markdown(meta, summary, rows, profile.signals), args.out.parent)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
