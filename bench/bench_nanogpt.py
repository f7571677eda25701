"""nanoGPT's CPU "baby GPT" vs our training on Tiny Shakespeare, side by side at equal wall-clock: bits per character.

    python bench/bench_nanogpt.py                               # 3 pairs: nanoGPT (2000 iterations), then ours on
                                                                # its wall-clock (~13 min)
    python bench/bench_nanogpt.py --max-iters 300 --repeats 1   # a quick look

Both train on exactly the first 90% of the characters and are scored on the last 10%
(111,540 characters), as nanoGPT's prepare.py splits the text. nanoGPT is run unmodified from
../shared/anchors/nanogpt (its own script times it and scores it on the whole split). Ours runs
the project's own code path — train_bpe, pack_split, llmops.models.training.loop.train with a wall-clock
budget, score_documents — and the clock covers all of it (tokenizer training, packing, model
construction, training with its evaluations and checkpoints). Ours sizes its model to that budget
as ``model.preset=auto`` does (llmops.models.training.budget). Bits per character: the summed NLL
(nats) over every token of the validation text / ln 2 / its characters.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, ROOT, SHAKESPEARE, load_average, markdown_table, run_meta, write_results  # noqa: E402

BABY_GPT = ROOT.parent / "shared" / "anchors" / "nanogpt" / "baby_gpt.py"


def run_nanogpt(max_iters: int, out: Path) -> dict:
    """nanoGPT's own baby_gpt.py in a child process with this interpreter; its JSON result."""
    subprocess.run([sys.executable, str(BABY_GPT), "--max-iters", str(max_iters), "--json", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_ours(text: str, budget_s: float, args: argparse.Namespace) -> dict:
    """Our pipeline's core functions on the same split, everything inside ``budget_s`` of wall-clock."""
    import torch

    from llmops.infra.config import TrainConfig
    from llmops.infra.store import LocalStore
    from llmops.models.data.packing import pack_split
    from llmops.models.data.tokenizer import train_bpe
    from llmops.models.evaluation.scoring import score_documents
    from llmops.models.model.presets import build_config
    from llmops.models.training import budget
    from llmops.models.training.checkpoint import Checkpointer
    from llmops.models.training.loop import read_metrics, train
    from llmops.models.training.setup import build_model

    t0 = time.perf_counter()
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    # paragraphs as documents: the tokenizer learns words, the packer separates speeches with eos
    docs = [p for p in train_text.split("\n\n") if p.strip()]
    tokenizer = train_bpe(docs, args.vocab)
    blocks = pack_split(docs, tokenizer, args.block)
    overrides, sized = json.loads(args.overrides), None
    if args.preset == "auto":  # as model.preset=auto does: the shape for this budget on this machine
        sized = budget.plan(budget_s, budget.machine_speed())
        overrides = {**sized.overrides, **overrides}
    config = build_config("mini" if args.preset == "auto" else args.preset, vocab_size=len(tokenizer),
                          context_length=args.block, bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id, overrides=overrides)
    model = build_model(config, seed=1337)
    setup_s = time.perf_counter() - t0
    # the loop's budget counts its steps; leave room for what it does between them and after
    step_budget = max(10.0, budget_s - setup_s - args.reserve)
    cfg = TrainConfig(max_steps=100_000, max_minutes=step_budget / 60, batch_size=args.batch, block_size=args.block,
                      lr=args.lr, warmup_steps=args.warmup, weight_decay=0.1, eval_every=10_000_000,
                      checkpoint_every=10_000_000, min_lr_ratio=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(model, blocks, blocks[:0], cfg, Checkpointer(LocalStore(tmp), "ck"), Path(tmp) / "m.jsonl")
        rows = read_metrics(Path(tmp) / "m.jsonl")
    wall = time.perf_counter() - t0
    model = outcome.model.eval()
    ctx = args.block
    with torch.no_grad():
        sliding = score_documents(model, tokenizer, [val_text], stride=ctx // 2)
        disjoint = score_documents(model, tokenizer, [val_text], stride=ctx - 1)
    bpc = lambda s: sum(s.nll_nats) / math.log(2) / len(val_text)  # noqa: E731
    return {
        "train_wall_s": round(wall, 1), "setup_s": round(setup_s, 1), "steps": outcome.state.step,
        "tokens_seen": outcome.state.tokens_seen, "epochs": round(outcome.state.tokens_seen / blocks.size, 2),
        "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in rows) / max(1, len(rows))),
        "chars_per_token": round(len(val_text) / sliding.tokens[0], 3),
        "val_chars": len(val_text), "val_tokens": sliding.tokens[0],
        "val_bits_per_char_sliding": round(bpc(sliding), 4),
        "val_bits_per_char_disjoint": round(bpc(disjoint), 4),
        "context_tokens": ctx, "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "sized": {"shape": sized.shape, "speed": round(sized.speed, 3), "reason": sized.reason} if sized else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iters", type=int, default=2000, help="nanoGPT iterations (its README's CPU run: 2000)")
    parser.add_argument("--preset", default="auto", help="a preset, or auto: sized to the budget (model.preset=auto)")
    parser.add_argument("--overrides", default="{}", help="JSON of transformers config overrides for the preset")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--reserve", type=float, default=3.0, help="seconds kept for the final checkpoint etc.")
    parser.add_argument("--repeats", type=int, default=3, help="nanoGPT-then-ours pairs; the median ratio is reported")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"{SHAKESPEARE} is missing: this benchmark needs the shared Tiny Shakespeare corpus")
    load_before, pairs = load_average(), []
    for i in range(args.repeats):  # each pair side by side: nanoGPT, then ours on the budget nanoGPT just took
        with tempfile.TemporaryDirectory() as tmp:
            nano = run_nanogpt(args.max_iters, Path(tmp) / "nanogpt.json")
        ours = run_ours(SHAKESPEARE.read_text(encoding="utf-8"), nano["train_wall_s"], args)
        pairs.append({"nanogpt": nano, "ours": ours,
                      "ratio": round(ours["val_bits_per_char_sliding"] / nano["val_bits_per_char"], 4)})
        print(f"pair {i + 1}: nanoGPT {nano['val_bits_per_char']:.4f} in {nano['train_wall_s']} s, ours "
              f"{ours['val_bits_per_char_sliding']:.4f} in {ours['train_wall_s']} s: {pairs[-1]['ratio']:.3f}",
              flush=True)
    ratios = sorted(p["ratio"] for p in pairs)
    median = ratios[len(ratios) // 2]
    result = {"meta": run_meta(load_average=f"{load_before} / {load_average()}"), "pairs": pairs,
              "ratio_bits_per_char": median, "ratio_spread": [ratios[0], ratios[-1]],
              "target": "ours <= 0.90 x nanoGPT bits/char at equal wall-clock, median of the pairs"}
    rows = []
    for i, pair in enumerate(pairs, 1):
        nano, ours = pair["nanogpt"], pair["ours"]
        name = f"llmops {ours['sized']['shape'] if ours['sized'] else args.preset}"
        rows += [
            [f"{i}: nanoGPT baby GPT (char-level, 4x128, block 64)", nano["train_wall_s"],
             f"{nano['tokens_per_s']:,}", "—", f"{nano['val_bits_per_char']:.4f}", "64 chars, disjoint windows", ""],
            [f"{i}: {name} (BPE {ours['vocab']}, block {args.block}, {ours['parameters']:,} parameters)",
             ours["train_wall_s"], f"{ours['tokens_per_s']:,}", ours["steps"],
             f"{ours['val_bits_per_char_sliding']:.4f}", f"sliding window, stride {args.block // 2} tokens",
             f"{pair['ratio']:.3f}"],
        ]
    met = median <= 0.90
    last = pairs[-1]["ours"]
    md = (f"# nanoGPT baby GPT vs llmops at equal wall-clock (Tiny Shakespeare)\n\n"
          f"{result['meta']['date']} · `{result['meta']['command']}` · load {result['meta']['load_average']}\n\n"
          + markdown_table(["run", "wall s", "tokens/s", "steps", "val bits/char", "context", "ours / nanoGPT"], rows)
          + f"\n\nOurs / nanoGPT bits per character, median of {len(pairs)} pairs: **{median:.3f}** (spread "
          f"{ratios[0]:.3f} to {ratios[-1]:.3f}; target ≤ 0.90: {'met' if met else 'missed'}). "
          + (f"The shape was sized to the budget (model.preset=auto): {last['sized']['reason']}. " if last["sized"]
             else "")
          + f"The last run saw {last['tokens_seen']:,} tokens ({last['epochs']} epochs, {last['chars_per_token']} "
          f"characters per token); the same model scored on disjoint {args.block}-token windows: "
          f"{last['val_bits_per_char_disjoint']:.4f} bits/char.\n")
    write_results("nanogpt", result, md, args.out)
    print(md)


if __name__ == "__main__":
    main()
