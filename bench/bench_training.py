"""Benchmark: training throughput (tokens/s) of our loop (llmops.models.training.loop.train) vs a bare PyTorch loop
and the HF Trainer, side by side.

The BASELINES.md section 2 setting: a 7.36 M-parameter Llama (the `small` preset with 4 layers and
an untied LM head: hidden 256, intermediate 688, 8 heads, vocab 8192), batches of 8 x 256 tokens,
fp32 on CPU, AdamW, torch's default thread count. Every variant gets a fresh model with the same
seed, the same packed blocks (stdlib docstrings + Tiny Shakespeare when present, BPE of 8192
tokens) and the same batch:

- ours         ``llmops.models.training.loop.train`` as the pipeline calls it (Checkpointer on a temporary LocalStore),
               with its defaults: ``train.cpu_matmul=auto`` runs the fp32 linear layers through oneDNN on
               CPUs where MKL's sgemm is slow (llmops.models.model.kernels), ``train.fused_loss`` computes the LM head
               and the cross-entropy chunk by chunk (llmops.models.training.fused_loss)
- ours_auto    what a user gets with defaults on a 15-minute run: the run's calibration
               (llmops.models.training.calibration) times fp32 + ATen, fp32 + oneDNN and, where the CPU computes
               bf16 natively, bf16 autocast on these shapes, and the loop trains with the fastest that matches
               fp32's loss (measured once, in round 1; later rounds reuse this machine's decision, as a user's
               second run does; its cost is reported). A default 1.5-minute run of this model skips the
               calibration (it would cost over train.calibration_share) and keeps the default.
- ours_plain   the same loop with ``cpu_matmul=aten, fused_loss=false``: the model's own forward and loss on
               torch's default kernels, as every other variant computes them
- bare         forward, backward, ``torch.optim.AdamW`` (default implementation), zero_grad; nothing else
- bare_fused   the same with ``AdamW(fused=True)`` (ours and the Trainer both use the fused AdamW)
- trainer      ``transformers.Trainer`` with its defaults (report_to=[], no eval, no saving)
- ours_compile, trainer_compile   with ``--compile`` (cold compile takes about a minute)
- ours_bf16, trainer_bf16         bf16 autocast on the CPU (``--variants``; other numerics than fp32)

Each run does ``--warmup`` steps, then ``--steps`` timed steps, then one more step that is not timed
(our loop evaluates and checkpoints at its last step). After every step of the loop under test, a
plain bare loop (default AdamW) on its own fresh model takes one step: its *bare partner*. The
loop's step ends are stamped by the same clock for every variant (our ``on_metrics`` callback, a
Trainer callback, the bare loop itself) and the partner's steps are left out of its time, so each
loop's per-step bookkeeping is inside its time and nothing else is. Why pair: on a shared 2-vCPU
VM two torch threads stall whenever the host does not run both vCPUs at once, and steps swing
between 1 and 6 s for minutes at a time; a loop and its partner alternate step by step, so they see
the same machine, and the ratio of their throughputs is steady where the throughputs are not.
Ratios between variants divide their ratios to the partner (the bare-vs-bare run is the control);
unpaired and best-step ratios are given beside them (see ``ESTIMATES``). ``--rounds`` repeats every
variant (order reversed every other round); ``--threads 1`` gives steadier, slower steps.

    python bench/bench_training.py                        # 8 timed steps x 2 rounds per variant
    python bench/bench_training.py --steps 5 --rounds 1   # a quick run
    python bench/bench_training.py --compile              # adds the torch.compile variants

Writes bench/results/training_throughput.json and training_throughput.md.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from common import (
    RESULTS,
    bench_corpus,
    load_average,
    markdown_table,
    max_rss_mb,
    median,
    run_meta,
    timed,
    write_results,
)

SEED = 1337
MODEL_OVERRIDES = {"num_hidden_layers": 4, "tie_word_embeddings": False}  # `small` at 7.36 M parameters
# our loop's own overhead is judged at the kernels the bare loop uses; the Trainer is judged against our defaults
TARGETS = {"ours_plain / bare": 0.95, "ours / trainer": 1.3, "ours_auto / trainer": 1.3, "ours_auto / best fixed": 0.95}


@dataclass
class Run:
    """One variant's run: when each of its steps ended, and its partner's steps in between.

    Step i of the loop ran from ``resumes[i - 1]`` (the partner's step before it had finished) to
    ``step_ends[i]``; without a partner ``resumes`` equals ``step_ends``.
    """

    variant: str
    round: int
    step_ends: list[float] = field(default_factory=list)
    resumes: list[float] = field(default_factory=list)
    partner_s: list[float] = field(default_factory=list)  # the bare partner's step after each of ours
    call_start: float = 0.0
    call_end: float = 0.0
    threads: int = 0
    kernels: str = ""  # the precision and kernels the variant computed with
    calibration_s: Optional[float] = None  # ours_auto: seconds its calibration took (0 when reused)
    logged_tokens_per_s: list[float] = field(default_factory=list)  # ours: metrics.jsonl, every step
    checkpoint_s: list[float] = field(default_factory=list)  # ours: each Checkpointer.save (after the timed steps)

    def own_steps(self, warmup: int, steps: int) -> list[float]:
        """Seconds of each timed step of this loop, the partner's steps left out."""
        return [self.step_ends[i] - self.resumes[i - 1] for i in range(warmup, warmup + steps)]

    def partner_steps(self, warmup: int, steps: int) -> list[float]:
        return self.partner_s[warmup: warmup + steps]


# ---------------------------------------------------------------- data and model


def make_blocks(vocab: int, block_size: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Train and validation blocks packed by our tokenizer path, and the tokenizer."""
    from llmops.models.data.packing import pack_split
    from llmops.models.data.tokenizer import train_bpe

    texts, _ = bench_corpus()
    tokenizer = train_bpe(texts, vocab)
    blocks = pack_split(texts, tokenizer, block_size)
    n_val = max(8, len(blocks) // 20)
    return blocks[n_val:], blocks[:n_val], tokenizer


def make_model(tokenizer, block_size: int, preset: str = "small"):
    """The benchmark's 7.36 M Llama (``small`` with MODEL_OVERRIDES), or another preset as it stands."""
    from llmops.models.model.presets import build_config
    from llmops.models.training.setup import build_model

    config = build_config(preset, vocab_size=len(tokenizer), context_length=block_size,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                          overrides=MODEL_OVERRIDES if preset == "small" else None)
    return build_model(config, SEED)


# ---------------------------------------------------------------- the variants


class BareLoop:
    """The plain loop, one step at a time: forward, backward, AdamW step, zero_grad, on our sampler's batches."""

    def __init__(self, model, blocks: np.ndarray, batch: int, fused: bool):
        import torch

        from llmops.models.training.batching import BlockSampler
        from llmops.models.training.checkpoint import TrainerState

        self.model, self.optimizer = model, torch.optim.AdamW(model.parameters(), lr=3e-4, fused=fused)
        self.sampler, self.state = BlockSampler(blocks, batch, SEED), TrainerState()
        model.train()

    def step(self) -> float:
        t0 = time.perf_counter()
        x = self.sampler.next(self.state)
        self.model(input_ids=x, labels=x).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def step_hook(run: Run, partner: Optional[BareLoop]) -> Callable[[], None]:
    """Called at the end of every step of the loop under test: stamp it, then let the partner take one step."""
    def after_step() -> None:
        run.step_ends.append(time.perf_counter())
        if partner is not None:
            run.partner_s.append(partner.step())
        run.resumes.append(time.perf_counter())
    return after_step


def run_ours(model, data: tuple, batch: int, total: int, run: Run, hook: Callable[[], None], compile: bool = False,
             plain: bool = False, device: str = "cpu", precision: str = "fp32",
             auto_minutes: Optional[float] = None) -> None:
    """Our loop (``train``) exactly as run_training calls it, with eval and checkpoints past the timed steps.

    The loop evaluates and saves a checkpoint once, at its last step, which is not timed; the
    checkpoint's save time is recorded on its own. One eval batch keeps that untimed tail short.
    """
    import torch

    from llmops.infra.config import TrainConfig
    from llmops.infra.store import LocalStore
    from llmops.models.training.checkpoint import Checkpointer
    from llmops.models.training.loop import read_metrics, train

    class TimedCheckpointer(Checkpointer):
        def save(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super().save(*args, **kwargs)
            finally:
                run.checkpoint_s.append(time.perf_counter() - t0)

    train_blocks, val_blocks, _ = data
    cfg = TrainConfig(max_steps=total, max_minutes=None, batch_size=batch, block_size=train_blocks.shape[1],
                      eval_every=10**9, eval_batches=1, checkpoint_every=10**9, device=device,
                      precision="auto" if auto_minutes else precision, compile=compile,
                      cpu_matmul="aten" if plain else "auto", fused_loss=not plain, seed=SEED,
                      num_threads=torch.get_num_threads())
    cfg = calibrated(model, cfg, run, train_blocks, auto_minutes) if auto_minutes else cfg.model_copy(
        update={"cpu_matmul": _static_matmul(cfg)})
    run.kernels = _kernels_label(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = TimedCheckpointer(LocalStore(tmp), "runs/bench/checkpoints", keep=cfg.keep_checkpoints)
        metrics = Path(tmp) / "metrics.jsonl"
        run.call_start = time.perf_counter()
        train(model, train_blocks, val_blocks, cfg, checkpointer, metrics, on_metrics=lambda m: hook())
        run.call_end = time.perf_counter()
        run.logged_tokens_per_s = [r["tokens_per_s"] for r in read_metrics(metrics)]


def _static_matmul(cfg) -> str:
    """What ``cpu_matmul=auto`` means unmeasured (the loop's rule without a calibration), made explicit."""
    import torch

    from llmops.models.model.kernels import use_onednn

    return "onednn" if use_onednn(cfg.cpu_matmul, torch.device(cfg.device if cfg.device != "auto" else "cpu"),
                                  cfg.precision if cfg.precision != "auto" else "fp32") else "aten"


def _kernels_label(cfg) -> str:
    from llmops.models.training.calibration import Kernels

    matmul = cfg.cpu_matmul if cfg.precision == "fp32" else "aten"
    label = Kernels(cfg.precision, matmul, bool(cfg.compile is True)).label
    return label + (", fused head and loss" if cfg.fused_loss and cfg.precision == "fp32" else "")


CALIBRATION_CACHE = Path(tempfile.mkdtemp(prefix="llmops-bench-calibration-"))  # this process's "machine" cache


def calibrated(model, cfg, run: Run, blocks: np.ndarray, minutes: float):
    """``cfg`` with the kernels a user's run of ``minutes`` would calibrate to (a default run, 1.5 minutes of this
    model, is too short to pay for it and keeps the default), preflight's timed step, this machine's cache (the
    first round measures, later rounds reuse)."""
    import torch

    from llmops.models.training.calibration import choose_kernels, with_kernels
    from llmops.models.training.loop import warmup_seconds

    device = torch.device("cpu")
    budget = cfg.model_copy(update={"max_steps": 1_000_000, "max_minutes": minutes})
    step_s = warmup_seconds(model, blocks, budget, device, "fp32")
    t0 = time.perf_counter()
    choice = choose_kernels(model, blocks, budget, device, store=None, run_prefix=None,
                            cache_dir=CALIBRATION_CACHE, step_s=step_s)
    run.calibration_s = time.perf_counter() - t0 if choice.source == "calibrated" else 0.0
    print(f"  ours_auto: {choice.label} ({choice.source}: {choice.reason})", flush=True)
    return with_kernels(cfg, choice)


def run_bare(model, data: tuple, batch: int, total: int, run: Run, hook: Callable[[], None],
             fused: bool = False) -> None:
    loop = BareLoop(model, data[0], batch, fused)
    run.kernels = "fp32 + ATen matmuls"
    run.call_start = time.perf_counter()
    for _ in range(total):
        loop.step()
        hook()
    run.call_end = time.perf_counter()


def run_trainer(model, data: tuple, batch: int, total: int, run: Run, hook: Callable[[], None],
                compile: bool = False, device: str = "cpu", precision: str = "fp32") -> None:
    """transformers.Trainer with its defaults; a callback marks the end of every optimizer step."""
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            hook()

    blocks = data[0].astype(np.int64)
    dataset = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=total, report_to=[],
                                 save_strategy="no", eval_strategy="no", use_cpu=device == "cpu", seed=SEED,
                                 torch_compile=compile, bf16=precision == "bf16", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[StepClock()])
        run.kernels = "bf16 autocast" if precision == "bf16" else "fp32 + ATen matmuls"
        run.call_start = time.perf_counter()
        trainer.train()
        run.call_end = time.perf_counter()


RUNNERS = {  # variant: (runner, its keyword arguments)
    "ours": (run_ours, {}), "ours_auto": (run_ours, {"auto_minutes": 15.0}), "ours_plain": (run_ours, {"plain": True}),
    "ours_compile": (run_ours, {"compile": True}),
    "bare": (run_bare, {}), "bare_fused": (run_bare, {"fused": True}),
    "trainer": (run_trainer, {}), "trainer_compile": (run_trainer, {"compile": True}),
    "ours_bf16": (run_ours, {"precision": "bf16"}), "trainer_bf16": (run_trainer, {"precision": "bf16"}),
}


def run_all(variants: list[str], data: tuple, args, steps: int, warmup: int, rounds: int,
            preset: str = "small", paired: bool = True) -> list[Run]:
    """Every variant once per round (order reversed every other round), each on a fresh model.

    With ``paired``, a plain bare loop on its own fresh model takes one step after every step of
    the variant, so both see the machine in the same state, step for step.
    """
    import gc

    import torch

    total, runs, block = warmup + steps + 1, [], data[0].shape[1]
    for rnd in range(rounds):
        for name in (variants if rnd % 2 == 0 else variants[::-1]):
            model = make_model(data[2], block, preset)  # fresh, same seed: every run starts equal
            partner = BareLoop(make_model(data[2], block, preset), data[0], args.batch, False) if paired else None
            run = Run(name, rnd + 1, threads=torch.get_num_threads())
            runner, kwargs = RUNNERS[name]
            runner(model, data, args.batch, total, run, step_hook(run, partner), **kwargs)
            runs.append(run)
            own = args.batch * block * steps / sum(run.own_steps(warmup, steps))
            line = f"  [{preset}] round {rnd + 1} {name:16s} {own:8,.0f} tokens/s"
            if paired:
                mate = args.batch * block * steps / sum(run.partner_steps(warmup, steps))
                line += f", its bare partner {mate:8,.0f} tokens/s ({own / mate:.3f})"
            print(line + f"; first step {run.step_ends[0] - run.call_start:.2f} s", flush=True)
            del model, partner
            gc.collect()
    return runs


# ---------------------------------------------------------------- diagnosis: where a step's time goes


OVERHEAD_BLOCK = 16  # tokens per sequence in the overhead measurement: small enough that the math takes ms


def loop_overhead(data: tuple, args, variants: list[str]) -> dict[str, float]:
    """Median step seconds of each loop on the ``tiny`` preset and 16-token blocks, where the math takes milliseconds.

    A loop's own per-step work (sampling, clipping, metrics, callbacks, data loading) costs about
    the same whatever the model, so measured here it stands out from the noise that hides it at
    7.36 M parameters; divided by the big model's step time it bounds each loop's overhead there.
    One torch thread: that work is Python, and two threads on a shared 2-vCPU machine make
    millisecond-sized ops stall at every barrier (tiny steps then swing by 5x).
    """
    import torch

    train_blocks, val_blocks, tokenizer = data
    short = (np.ascontiguousarray(train_blocks[:, :OVERHEAD_BLOCK]),
             np.ascontiguousarray(val_blocks[:, :OVERHEAD_BLOCK]), tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = run_all(variants, short, args, args.overhead_steps, 5, 3, preset="tiny", paired=False)
    finally:
        torch.set_num_threads(threads)
    return {name: median(s for r in runs if r.variant == name for s in r.own_steps(5, args.overhead_steps))
            for name in variants}


def phase_breakdown(data: tuple, args, steps: int, ours: bool = False) -> dict[str, float]:
    """Median seconds of each phase of a step (bare loop plus our clipping, fused AdamW): what a loop can save.

    With ``ours`` the forward computes as our loop's defaults do here: linear layers through oneDNN
    where train.cpu_matmul=auto picks it (llmops.models.model.kernels), and the fused head and loss
    (llmops.models.training.fused_loss).
    """
    import torch

    from llmops.models.model.kernels import linear_kernels, use_onednn
    from llmops.models.training.fused_loss import fused_head

    train_blocks, _, tokenizer = data
    model = make_model(tokenizer, args.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    onednn = ours and use_onednn("auto", torch.device("cpu"), "fp32")
    x = torch.from_numpy(train_blocks[:args.batch].astype(np.int64))
    phases = {k: [] for k in ("forward", "backward", "clip_grad_norm", "optimizer_step", "zero_grad")}
    for i in range(steps + 2):
        t = [time.perf_counter()]
        with linear_kernels(onednn), fused_head(model, ours, onednn) as head:
            if head is None:
                loss = model(input_ids=x, labels=x).loss
            else:
                loss = head.summed_nll(model(input_ids=x).logits, x) / (x.shape[0] * (x.shape[1] - 1))
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


RATIO_PAIRS = [("ours_auto", "trainer"), ("ours_auto", "bare"), ("ours_auto", "ours"), ("ours", "bare"),
               ("ours_plain", "bare"), ("ours", "bare_fused"), ("ours", "trainer"),
               ("ours_plain", "trainer"), ("ours", "ours_plain"), ("trainer", "bare"),
               ("bare_fused", "bare"), ("ours_compile", "bare"), ("ours_compile", "trainer_compile"),
               ("ours_compile", "trainer"), ("ours_compile", "ours"), ("trainer_compile", "trainer"),
               ("ours_bf16", "trainer_bf16"), ("ours_bf16", "ours"), ("trainer_bf16", "trainer")]


ESTIMATES = {  # how a ratio of tokens/s is estimated, best first
    "paired": "median over the timed steps of all rounds of (its partner's step time / the variant's step "
              "right before it), divided by the same for the other variant; the bare-vs-bare run is the control",
    "unpaired": "median over rounds of each variant's own tokens/s, divided",
    "best step": "tokens of one step / the variant's fastest timed step, divided",
}


def _rate(per_step: int, seconds: list[float]) -> float:
    return per_step * len(seconds) / sum(seconds)


def summarise(runs: list[Run], args) -> tuple[list[dict], dict[str, dict]]:
    """Per variant: own and partner tokens/s per round, their medians and ratio; ratios between variants three ways."""
    per_step, rows = args.batch * args.block_size, []
    for name in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == name]
        own = [r.own_steps(args.warmup, args.steps) for r in mine]
        mate = [r.partner_steps(args.warmup, args.steps) for r in mine]
        rates, mates = [_rate(per_step, o) for o in own], [_rate(per_step, m) for m in mate]
        # step by step: a switch of the machine's speed spoils one pair, not a whole round
        step_ratios = [m / o for os_, ms in zip(own, mate) for o, m in zip(os_, ms)]
        steps = [s for o in own for s in o]
        row = {"variant": name, "tokens_per_s": median(rates), "tokens_per_s_rounds": rates,
               "partner_tokens_per_s_rounds": mates, "vs_partner": median(step_ratios),
               "vs_partner_rounds": [a / b for a, b in zip(rates, mates)], "vs_partner_steps": step_ratios,
               "median_step_s": median(steps), "best_step_s": min(steps),
               "tokens_per_s_best_step": per_step / min(steps),
               "first_step_s": [r.step_ends[0] - r.call_start for r in mine],
               "after_timed_s": [r.call_end - r.step_ends[args.warmup + args.steps - 1] for r in mine],
               "threads": sorted({r.threads for r in mine})}
        logged = [v for r in mine for v in r.logged_tokens_per_s[args.warmup: args.warmup + args.steps]]
        if logged:
            row["metrics_jsonl_tokens_per_s_median"] = median(logged)
            row["checkpoint_save_s"] = [s for r in mine for s in r.checkpoint_s]
        row["kernels"] = sorted({r.kernels for r in mine})
        row["calibration_s"] = [r.calibration_s for r in mine if r.calibration_s is not None]
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    ratios = {f"{a} / {b}": _ratio(by[a], by[b]) for a, b in RATIO_PAIRS if a in by and b in by}
    fixed = [r for r in rows if r["variant"].startswith("ours") and r["variant"] != "ours_auto"]
    if "ours_auto" in by and fixed:  # the calibration picks right: as fast as the best fixed setting of our loop
        against = [_ratio(by["ours_auto"], f) for f in fixed]
        ratios["ours_auto / best fixed"] = {k: min(r[k] for r in against) for k in ESTIMATES}
    return rows, ratios


def _ratio(a: dict, b: dict) -> dict[str, float]:
    return {"paired": a["vs_partner"] / b["vs_partner"], "unpaired": a["tokens_per_s"] / b["tokens_per_s"],
            "best step": a["tokens_per_s_best_step"] / b["tokens_per_s_best_step"]}


def _verdict(name: str, ratio: dict[str, float]) -> list[str]:
    if name not in TARGETS:
        return ["", ""]
    met = [ratio[k] >= TARGETS[name] for k in ESTIMATES]
    return [f">= {TARGETS[name]}", "met" if all(met) else ("**missed**" if not any(met) else "mixed")]


def overhead_rows(overhead: dict[str, float], rows: list[dict]) -> list[list[str]]:
    """Each loop's tiny-model step, its excess over the bare (fused) loop, and that excess as a share of a big step."""
    big = {r["variant"]: r["median_step_s"] for r in rows}
    ref = overhead.get("bare_fused", overhead.get("bare"))
    out = []
    for name, step in overhead.items():
        extra = (step - ref) if ref is not None else None
        share = f"{100 * extra / big[name]:.2f}%" if extra is not None and name in big else "-"
        out.append([name, f"{step * 1000:.1f}", f"{extra * 1000:+.1f}" if extra is not None else "-", share])
    return out


def markdown(rows: list[dict], ratios: dict, phases: dict, overhead: dict, meta: dict) -> str:
    fmt = lambda vals, f: " / ".join(format(v, f) for v in vals)  # noqa: E731
    table = markdown_table(
        ["variant", "computes with", "tokens/s (median of rounds)", "per round", "its bare partner, per round",
         "vs partner, per round", "vs partner, median step", "tokens/s (best step)", "median step s", "first step s",
         "after timed s"],
        [[r["variant"], " / ".join(r["kernels"]), f"{r['tokens_per_s']:,.0f}", fmt(r["tokens_per_s_rounds"], ",.0f"),
          fmt(r["partner_tokens_per_s_rounds"], ",.0f"), fmt(r["vs_partner_rounds"], ".3f"), f"{r['vs_partner']:.3f}",
          f"{r['tokens_per_s_best_step']:,.0f}", f"{r['median_step_s']:.3f}", fmt(r["first_step_s"], ".2f"),
          fmt(r["after_timed_s"], ".2f")] for r in rows])
    ratio_rows = [[k, f"{v['paired']:.3f}", f"{v['unpaired']:.3f}", f"{v['best step']:.3f}", *_verdict(k, v)]
                  for k, v in ratios.items()]
    kernels = list(phases)
    phase_rows = [[k, *(f"{phases[c][k] * 1000:.1f} ({100 * phases[c][k] / sum(phases[c].values()):.1f}%)"
                        for c in kernels)] for k in (phases[kernels[0]] if kernels else {})]
    ours = next((r for r in rows if r["variant"] == "ours"), None)
    notes = []
    if ours and "metrics_jsonl_tokens_per_s_median" in ours:
        notes.append(f"Our loop's own metrics.jsonl gives a median of {ours['metrics_jsonl_tokens_per_s_median']:,.0f} "
                     "tokens/s over the same steps (its per-step timer leaves out the metrics write and callback). "
                     f"Saving its checkpoint (model + AdamW state, LocalStore) took "
                     f"{fmt(ours['checkpoint_save_s'], '.2f')} s, outside the timed steps.")
    return "\n".join([
        "# Training throughput: our loop vs a bare PyTorch loop vs the HF Trainer",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}), "
        f"torch {meta['torch']} ({meta['torch_threads']} threads), transformers {meta['transformers']}, "
        f"load average at start / end {meta['load_start']} / {meta['load_end']}",
        "",
        f"CPU flags that decide kernels: {meta['cpu_flags'] or 'none of avx2/avx512f/avx512_bf16/amx'}; torch's CPU "
        f"capability {meta['torch_cpu_capability']}, native bf16: {meta['native_bf16']}.",
        "",
        f"Llama, {meta['parameters']:,} parameters ({meta['model']}), batch {meta['batch']} x {meta['block_size']} "
        f"tokens, AdamW, {meta['train_blocks']:,} training blocks; each variant's precision and kernels are in the "
        "table. `ours` is our loop with the unmeasured rule (train.cpu_matmul=auto without a calibration, fused head "
        "and loss); `ours_auto` is what a user gets with defaults, the calibrated choice"
        f"{_calibration_note(rows)}; every other variant computes with torch's default kernels and the model's own "
        "loss. "
        f"Each run: {meta['warmup']} warm-up + "
        f"{meta['steps']} timed steps + 1 untimed step; after each of its steps a plain bare loop (default AdamW) "
        f"on its own fresh model takes one step (its *bare partner*), so every loop is compared with the same "
        f"reference under the same load, step for step. {meta['rounds']} round(s), order reversed every other round. "
        "tokens/s counts the loop's own step times only; `after timed s`: from the last timed step to the end of "
        "the call (one more step, plus the partner's; ours also evaluates one batch and saves its final checkpoint).",
        "",
        table,
        "",
        "Ratios: " + "; ".join(f"**{k}**: {v}" for k, v in ESTIMATES.items()) + ".",
        "",
        markdown_table(["ratio of tokens/s", "paired", "unpaired", "best step", "target", ""], ratio_rows),
        "",
        *(notes + [""] if notes else []),
        *([f"Where a step's time goes (a bare step with clipping and fused AdamW, median of {meta['phase_steps']} "
           "steps), as torch and the model compute it and as our defaults do (oneDNN linear layers where picked, "
           "the fused head and loss):", "",
           markdown_table(["phase", *(f"ms (share), {c}" for c in kernels)], phase_rows), ""] if phases else []),
        *([f"Each loop's own per-step cost, measured where the math is small "
           f"(the `tiny` preset, {OVERHEAD_BLOCK}-token "
           f"blocks, 1 thread, no partner, {meta['overhead_steps']} timed steps x 3 rounds, median step); its excess "
           "over the bare loop (fused AdamW when measured) as a share of that loop's median step at 7.36 M:", "",
           markdown_table(["loop", "tiny step ms", "vs bare ms", "share of a 7.36 M step"],
                          overhead_rows(overhead, rows)), ""] if overhead else []),
        f"Peak RSS of the process: {meta['peak_rss_mb']:.0f} MB.",
        "",
    ])


def _calibration_note(rows: list[dict]) -> str:
    auto = next((r for r in rows if r["variant"] == "ours_auto"), None)
    spent = [s for s in auto["calibration_s"] if s] if auto else []
    return f" (the calibration took {spent[0]:.1f} s in round 1, 0 s after, from this machine's cache)" if spent else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first; the clock starts at the end of the last one (compile: 3 at least)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every variant (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="add ours_compile and trainer_compile")
    parser.add_argument("--variants", nargs="+",
                        default=["ours_auto", "ours", "ours_plain", "bare", "bare_fused", "trainer"],
                        choices=list(RUNNERS))
    parser.add_argument("--phase-steps", type=int, default=5, help="steps of the per-phase breakdown (0: skip)")
    parser.add_argument("--overhead-steps", type=int, default=40,
                        help="timed steps per loop on the tiny preset, to measure each loop's own cost (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "training_throughput", help="path stem of the .json/.md")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's end starts the clock)")

    import datasets
    import torch
    import transformers

    from llmops.models.training.precision import cpu_flags, cpu_native_bf16

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_warning()
    logging.getLogger("llmops").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_average()
    data, prep_s = timed(make_blocks, args.vocab, args.block_size)
    params = sum(p.numel() for p in make_model(data[2], args.block_size).parameters())
    print(f"{params:,} parameters; {len(data[0]):,} training blocks of {args.block_size} tokens ({prep_s:.1f} s); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    variants = list(dict.fromkeys(args.variants + (["ours_compile", "trainer_compile"] if args.compile else [])))
    if any(v.endswith("_compile") for v in variants) and args.warmup < 3:
        args.warmup = 3  # compiling (and recompiling for the backward and the optimizer) happens in the first steps
        print("compile variants: --warmup raised to 3", flush=True)
    runs = run_all(variants, data, args, args.steps, args.warmup, args.rounds)
    phases = {}
    if args.phase_steps:
        phases["torch's kernels, the model's loss"] = phase_breakdown(data, args, args.phase_steps)
        phases["ours"] = phase_breakdown(data, args, args.phase_steps, ours=True)
    plain = [v for v in ("ours", "ours_plain", "bare", "bare_fused", "trainer") if v in variants]
    overhead = loop_overhead(data, args, plain) if args.overhead_steps else {}
    rows, ratios = summarise(runs, args)
    meta = run_meta(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    transformers=transformers.__version__, parameters=params,
                    model=f"`small` preset + {MODEL_OVERRIDES}", batch=args.batch, block_size=args.block_size,
                    steps=args.steps, warmup=args.warmup, rounds=args.rounds, train_blocks=len(data[0]),
                    phase_steps=args.phase_steps, overhead_steps=args.overhead_steps, peak_rss_mb=max_rss_mb(),
                    load_start=load_start, load_end=load_average(),
                    cpu_flags=" ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni",
                                                             "amx_bf16", "amx_tile"})),
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability(), native_bf16=cpu_native_bf16())
    text = markdown(rows, ratios, phases, overhead, meta)
    print(text)
    write_results(args.out.name, {"meta": meta, "results": rows, "ratios": ratios, "targets": TARGETS,
                                  "phases_s": phases, "tiny_step_s": overhead, "runs": [asdict(r) for r in runs]},
                  text, args.out.parent)


if __name__ == "__main__":
    main()
