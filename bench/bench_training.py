"""Benchmark: training throughput (tokens/s) of models.training.train vs a bare PyTorch loop and the HF Trainer, side by side.

The BASELINES.md section 2 setting: a 7.36 M-parameter Llama (the `small` preset with 4 layers and
an untied LM head: hidden 256, intermediate 688, 8 heads, vocab 8192), batches of 8 x 256 tokens,
fp32 on CPU, AdamW, torch's default thread count. Every variant gets a fresh model with the same
seed, the same packed blocks (stdlib docstrings + Tiny Shakespeare when present, BPE of 8192
tokens) and the same batch:

- ours         ``models.training.train`` as the pipeline calls it (Checkpointer on a temporary LocalStore)
- bare         forward, backward, ``torch.optim.AdamW`` (default implementation), zero_grad; nothing else
- bare_fused   the same with ``AdamW(fused=True)`` (ours and the Trainer both use the fused AdamW)
- trainer      ``transformers.Trainer`` with its defaults (report_to=[], no eval, no saving)
- ours_compile, trainer_compile   with ``--compile`` (cold compile takes about a minute)

Each run does ``--warmup`` steps, then ``--steps`` timed steps, then one more step that is not timed
(our loop evaluates and checkpoints at its last step). tokens/s = tokens of the timed steps / the
wall time from the end of the last warm-up step to the end of the last timed step, taken by the
same clock for every variant (our ``on_metrics`` callback, a Trainer callback, the bare loop itself),
so per-step bookkeeping of each loop is inside the time. Variants are interleaved over ``--rounds``
(order reversed every other round); the table gives the median.

    python bench/bench_training.py                        # 30 timed steps, 2 rounds
    python bench/bench_training.py --steps 5 --rounds 1   # a quick run
    python bench/bench_training.py --compile              # adds the torch.compile variants

Writes bench/results/training_throughput.json and training_throughput.md.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common import RESULTS, bench_corpus, markdown_table, max_rss_mb, median, run_meta, timed, write_results

SEED = 1337
MODEL_OVERRIDES = {"num_hidden_layers": 4, "tie_word_embeddings": False}  # `small` at 7.36 M parameters
TARGETS = {"ours / bare": 0.95, "ours / trainer": 1.3}


@dataclass
class Run:
    """One variant's run: step end times (perf_counter) and what happened around them."""

    variant: str
    round: int
    step_ends: list[float] = field(default_factory=list)
    call_start: float = 0.0
    call_end: float = 0.0
    threads: int = 0
    logged_tokens_per_s: list[float] = field(default_factory=list)  # ours: metrics.jsonl, timed steps

    def timed(self, warmup: int, steps: int) -> tuple[float, list[float]]:
        """Wall seconds of the timed steps and each one's interval."""
        ends = self.step_ends[warmup - 1: warmup + steps]
        return ends[-1] - ends[0], list(np.diff(ends))


# ---------------------------------------------------------------- data and model


def make_blocks(vocab: int, block_size: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Train and validation blocks packed by our tokenizer path, and the tokenizer."""
    from models.tokenizer import pack_split, train_bpe

    texts, _ = bench_corpus()
    tokenizer = train_bpe(texts, vocab)
    blocks = pack_split(texts, tokenizer, block_size)
    n_val = max(8, len(blocks) // 20)
    return blocks[n_val:], blocks[:n_val], tokenizer


def make_model(tokenizer, block_size: int):
    from models.presets import build_config
    from models.training import build_model

    config = build_config("small", vocab_size=len(tokenizer), context_length=block_size,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                          overrides=MODEL_OVERRIDES)
    return build_model(config, SEED)


# ---------------------------------------------------------------- the variants


def run_ours(model, train_blocks, val_blocks, batch: int, total: int, compile: bool, run: Run) -> None:
    """models.training.train exactly as run_training calls it, with eval and checkpoints past the timed steps."""
    from infra.config import TrainConfig
    from infra.store import LocalStore
    from models.checkpoint import Checkpointer
    from models.training import read_metrics, train

    cfg = TrainConfig(max_steps=total, max_minutes=None, batch_size=batch, block_size=train_blocks.shape[1],
                      eval_every=10**9, checkpoint_every=10**9, device="cpu", precision="fp32",
                      compile=compile, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = Checkpointer(LocalStore(tmp), "runs/bench/checkpoints", keep=cfg.keep_checkpoints)
        metrics = Path(tmp) / "metrics.jsonl"
        run.call_start = time.perf_counter()
        train(model, train_blocks, val_blocks, cfg, checkpointer, metrics,
              on_metrics=lambda m: run.step_ends.append(time.perf_counter()))
        run.call_end = time.perf_counter()
        run.logged_tokens_per_s = [r["tokens_per_s"] for r in read_metrics(metrics)]


def run_bare(model, train_blocks, batch: int, total: int, fused: bool, run: Run) -> None:
    """The plain loop: forward, backward, AdamW step, zero_grad, on the batches our sampler draws."""
    import torch

    from models.checkpoint import TrainerState
    from models.training import BlockSampler

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=fused)
    sampler, state = BlockSampler(train_blocks, batch, SEED), TrainerState()
    model.train()
    run.call_start = time.perf_counter()
    for _ in range(total):
        x = sampler.next(state)
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.step_ends.append(time.perf_counter())
    run.call_end = time.perf_counter()


def run_trainer(model, train_blocks, batch: int, total: int, compile: bool, run: Run) -> None:
    """transformers.Trainer with its defaults; a callback stamps the end of every optimizer step."""
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.step_ends.append(time.perf_counter())

    data = datasets.Dataset.from_dict({"input_ids": train_blocks.astype(np.int64),
                                       "labels": train_blocks.astype(np.int64)}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=total, report_to=[],
                                 save_strategy="no", eval_strategy="no", use_cpu=True, seed=SEED,
                                 torch_compile=compile, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[StepClock()])
        run.call_start = time.perf_counter()
        trainer.train()
        run.call_end = time.perf_counter()


def variant_fn(name: str, data: tuple, batch: int, total: int) -> Callable:
    train_blocks, val_blocks, _ = data
    return {
        "ours": lambda m, r: run_ours(m, train_blocks, val_blocks, batch, total, False, r),
        "ours_compile": lambda m, r: run_ours(m, train_blocks, val_blocks, batch, total, True, r),
        "bare": lambda m, r: run_bare(m, train_blocks, batch, total, False, r),
        "bare_fused": lambda m, r: run_bare(m, train_blocks, batch, total, True, r),
        "trainer": lambda m, r: run_trainer(m, train_blocks, batch, total, False, r),
        "trainer_compile": lambda m, r: run_trainer(m, train_blocks, batch, total, True, r),
    }[name]


def run_all(variants: list[str], data: tuple, args) -> list[Run]:
    import torch

    total, runs = args.warmup + args.steps + 1, []
    tokens = args.batch * args.block_size * args.steps
    for rnd in range(args.rounds):
        for name in (variants if rnd % 2 == 0 else variants[::-1]):
            model = make_model(data[2], args.block_size)  # fresh, same seed: every run starts equal
            run = Run(name, rnd + 1, threads=torch.get_num_threads())
            variant_fn(name, data, args.batch, total)(model, run)
            seconds, _ = run.timed(args.warmup, args.steps)
            print(f"  round {rnd + 1} {name:16s} {tokens / seconds:8,.0f} tokens/s "
                  f"(first step {run.step_ends[0] - run.call_start:.2f} s)", flush=True)
            runs.append(run)
    return runs


# ---------------------------------------------------------------- diagnosis: where a step's time goes


def phase_breakdown(data: tuple, args, steps: int) -> dict[str, float]:
    """Median seconds of each phase of a step (bare loop plus our clipping, fused AdamW): what a loop can save."""
    import torch

    train_blocks, _, tokenizer = data
    model = make_model(tokenizer, args.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    x = torch.from_numpy(train_blocks[:args.batch].astype(np.int64))
    phases = {k: [] for k in ("forward", "backward", "clip_grad_norm", "optimizer_step", "zero_grad")}
    for i in range(steps + 2):
        t = [time.perf_counter()]
        loss = model(input_ids=x, labels=x).loss
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if i >= 2:  # two warm-up steps
            for k, a, b in zip(phases, t, t[1:]):
                phases[k].append(b - a)
    return {k: median(v) for k, v in phases.items()}


# ---------------------------------------------------------------- results


def summarise(runs: list[Run], args) -> tuple[list[dict], dict[str, float]]:
    tokens = args.batch * args.block_size * args.steps
    rows = []
    for name in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == name]
        rates = [tokens / r.timed(args.warmup, args.steps)[0] for r in mine]
        step_med = median(s for r in mine for s in r.timed(args.warmup, args.steps)[1])
        row = {"variant": name, "tokens_per_s": median(rates), "tokens_per_s_rounds": rates,
               "median_step_s": step_med, "tokens_per_s_from_median_step": args.batch * args.block_size / step_med,
               "first_step_s": [r.step_ends[0] - r.call_start for r in mine],
               "after_timed_s": [r.call_end - r.step_ends[args.warmup + args.steps - 1] for r in mine],
               "threads": sorted({r.threads for r in mine})}
        logged = [v for r in mine for v in r.logged_tokens_per_s[args.warmup: args.warmup + args.steps]]
        if logged:
            row["metrics_jsonl_tokens_per_s_median"] = median(logged)
        rows.append(row)
    rate = {r["variant"]: r["tokens_per_s"] for r in rows}
    ratios = {}
    for a, b in [("ours", "bare"), ("ours", "bare_fused"), ("ours", "trainer"), ("trainer", "bare"),
                 ("bare_fused", "bare"), ("ours_compile", "bare"), ("ours_compile", "trainer_compile"),
                 ("ours_compile", "trainer"), ("ours_compile", "ours"), ("trainer_compile", "trainer")]:
        if a in rate and b in rate:
            ratios[f"{a} / {b}"] = rate[a] / rate[b]
    for r in rows:
        r["vs_bare"] = r["tokens_per_s"] / rate["bare"] if "bare" in rate else None
    return rows, ratios


def markdown(rows: list[dict], ratios: dict, phases: dict, meta: dict) -> str:
    table = markdown_table(
        ["variant", "tokens/s (median)", "per round", "vs bare", "median step s", "first step s", "after timed s"],
        [[r["variant"], f"{r['tokens_per_s']:,.0f}", " / ".join(f"{v:,.0f}" for v in r["tokens_per_s_rounds"]),
          f"{r['vs_bare']:.3f}" if r["vs_bare"] else "-", f"{r['median_step_s']:.3f}",
          " / ".join(f"{v:.2f}" for v in r["first_step_s"]), " / ".join(f"{v:.2f}" for v in r["after_timed_s"])]
         for r in rows])
    ratio_rows = [[k, f"{v:.3f}", f">= {TARGETS[k]}" if k in TARGETS else "",
                   ("met" if v >= TARGETS[k] else "**missed**") if k in TARGETS else ""] for k, v in ratios.items()]
    step = sum(phases.values())
    phase_rows = [[k, f"{v * 1000:.1f}", f"{100 * v / step:.1f}%"] for k, v in phases.items()]
    ours = next((r for r in rows if r["variant"] == "ours"), None)
    logged = (f" Our loop's own metrics.jsonl reports a median of {ours['metrics_jsonl_tokens_per_s_median']:,.0f} "
              "tokens/s over the same steps (its per-step timer excludes the metrics write and callback)."
              if ours and "metrics_jsonl_tokens_per_s_median" in ours else "")
    return "\n".join([
        "# Training throughput: our loop vs a bare PyTorch loop vs the HF Trainer",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}), "
        f"torch {meta['torch']} ({meta['torch_threads']} threads), transformers {meta['transformers']}, "
        f"load average at start/end {meta['load_start']} / {meta['load_end']}",
        "",
        f"Llama, {meta['parameters']:,} parameters ({meta['model']}), batch {meta['batch']} x {meta['block_size']} "
        f"tokens, fp32, AdamW, {meta['train_blocks']:,} training blocks. {meta['warmup']} warm-up + "
        f"{meta['steps']} timed steps per run, {meta['rounds']} round(s) interleaved; tokens/s from the wall "
        f"time between step ends (see the script's docstring).{logged} `after timed s`: from the last timed "
        "step to the end of the call (one more step; ours also evaluates and saves its final checkpoint there).",
        "",
        table,
        "",
        markdown_table(["ratio (tokens/s)", "value", "target", ""], ratio_rows),
        "",
        f"Where a step's time goes (bare step with clipping and fused AdamW, median of {meta['phase_steps']} steps):",
        "",
        markdown_table(["phase", "ms", "share"], phase_rows),
        "",
        f"Peak RSS of the process: {meta['peak_rss_mb']:.0f} MB.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile variants: at least 3)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="add ours_compile and trainer_compile")
    parser.add_argument("--variants", nargs="+", default=["ours", "bare", "bare_fused", "trainer"])
    parser.add_argument("--phase-steps", type=int, default=10, help="steps of the per-phase breakdown (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "training_throughput", help="path stem of the .json/.md")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's end starts the clock)")

    import os

    import torch
    import transformers

    logging.getLogger("llmops").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_warning()
    load_start = os.getloadavg()
    data, prep_s = timed(make_blocks, args.vocab, args.block_size)
    params = sum(p.numel() for p in make_model(data[2], args.block_size).parameters())
    print(f"{params:,} parameters; {len(data[0]):,} training blocks of {args.block_size} tokens ({prep_s:.1f} s); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    variants = args.variants + (["ours_compile", "trainer_compile"] if args.compile else [])
    runs = run_all(variants, data, args)
    phases = phase_breakdown(data, args, args.phase_steps) if args.phase_steps else {}
    rows, ratios = summarise(runs, args)
    meta = run_meta(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    transformers=transformers.__version__, parameters=params,
                    model=f"`small` preset + {MODEL_OVERRIDES}", batch=args.batch, block_size=args.block_size,
                    steps=args.steps, warmup=args.warmup, rounds=args.rounds, train_blocks=len(data[0]),
                    phase_steps=args.phase_steps, peak_rss_mb=max_rss_mb(),
                    load_start=" ".join(f"{v:.1f}" for v in load_start),
                    load_end=" ".join(f"{v:.1f}" for v in os.getloadavg()))
    text = markdown(rows, ratios, phases, meta)
    print(text)
    write_results(args.out.name, {"meta": meta, "results": rows, "ratios": ratios, "targets": TARGETS,
                                  "phases_s": phases, "runs": [asdict(r) for r in runs]}, text, args.out.parent)


if __name__ == "__main__":
    main()
