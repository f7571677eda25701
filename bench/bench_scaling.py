"""The scaling table behind ``model.preset=auto``: held-out bits per character of model shapes at wall-clock budgets.

    python bench/bench_scaling.py                                 # 5 shapes x 2 budgets (~30 min on 2 cores)
    python bench/bench_scaling.py --budgets 30 --shapes h96-l3     # a quick look

Every run is our own code path on nanoGPT's Tiny Shakespeare split (bench_nanogpt.run_ours: BPE, packing,
the training loop with the wall-clock budget, sliding-window scoring of the held-out 10%), one shape of
``llmops.models.training.budget.SHAPES`` at a time, with the same tokenizer, block, batch and learning rate.
Each run also records the shape's training tokens/s here: a machine that trains the reference shape
faster has, at the same budget, more tokens to spend, and ``budget.plan`` scales the budget by that speed.
Writes bench/results/scaling.{json,md}; the table in models/training/budget.py is copied from it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_nanogpt import run_ours  # noqa: E402
from common import RESULTS, SHAKESPEARE, load_average, markdown_table, run_meta, write_results  # noqa: E402

from llmops.models.training.budget import REFERENCE, SHAPES, probe_tokens_per_s, shape_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["h64-l3", "h96-l2", "h96-l3", "h128-l3", "h128-l4"],
                        choices=list(SHAPES))
    parser.add_argument("--budgets", nargs="+", type=float, default=[60.0, 240.0], help="wall-clock seconds")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--reserve", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"{SHAKESPEARE} is missing: this benchmark needs the shared Tiny Shakespeare corpus")
    text, load_before, points = SHAKESPEARE.read_text(encoding="utf-8"), load_average(), []
    probe = probe_tokens_per_s(steps=5)
    print(f"probe: the reference shape at {probe:,.0f} tokens/s (forward + backward)", flush=True)
    for budget in args.budgets:
        for shape in args.shapes:
            run = argparse.Namespace(**vars(args), preset="mini", overrides=json.dumps(shape_overrides(shape)))
            ours = run_ours(text, budget, run)
            points.append({"shape": shape, "budget_s": budget, "parameters": ours["parameters"],
                           "tokens_per_s": ours["tokens_per_s"], "tokens_seen": ours["tokens_seen"],
                           "epochs": ours["epochs"], "bits_per_char": ours["val_bits_per_char_sliding"]})
            print(json.dumps(points[-1]), flush=True)
    meta = run_meta(load_average=f"{load_before} / {load_average()}", vocab=args.vocab, block=args.block,
                    batch=args.batch, lr=args.lr, probe_tokens_per_s=round(probe))
    rows = [[p["shape"], f"{p['budget_s']:.0f}", f"{p['parameters']:,}", f"{p['tokens_per_s']:,}",
             f"{p['tokens_seen']:,}", p["epochs"], f"{p['bits_per_char']:.4f}"] for p in points]
    best = {b: min((p for p in points if p["budget_s"] == b), key=lambda p: p["bits_per_char"])["shape"]
            for b in args.budgets}
    md = (f"# Scaling table: held-out bits/char by model shape and wall-clock budget (Tiny Shakespeare)\n\n"
          f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}) · load "
          f"{meta['load_average']}\n\nBPE {args.vocab}, block {args.block}, batch {args.batch}, lr {args.lr}, "
          "warmup + cosine to the budget; scored with a sliding window (stride = block / 2) on the held-out 10%.\n\n"
          + markdown_table(["shape", "budget s", "parameters", "tokens/s", "tokens seen", "epochs", "bits/char"], rows)
          + "\n\nBest shape per budget: " + ", ".join(f"{b:.0f} s: **{s}**" for b, s in best.items()) + ".\n")
    md += (f"\nThe probe (forward + backward of the reference shape, {REFERENCE}, on BPE 512, block 128, batch 16) "
           f"ran at {probe:,.0f} tokens/s here: `budget.plan` scales a run's budget by its own probe over this one.\n")
    write_results("scaling", {"meta": meta, "points": points, "best": best}, md, args.out)
    print(md)


if __name__ == "__main__":
    main()
