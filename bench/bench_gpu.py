"""Benchmark on a GPU: tokens/s and model FLOPs utilisation (MFU) of our loop vs the HF Trainer, bf16 + torch.compile.

The issue's GPU setting: the ``gpt2-124m`` preset (Llama layout at GPT-2 small's width and depth,
vocab 32768 as configs/gpu-124m.yaml), 1024-token blocks, bf16 autocast, torch.compile, fused
AdamW, one device. Both loops get the same fresh model (same seed), the same token blocks, the same
batch and precision:

- ours      ``llmops.models.training.loop.train`` (train.device=cuda, precision=bf16, compile=true)
- trainer   ``transformers.Trainer`` with ``bf16=True, torch_compile=True``, its defaults otherwise

Each runs ``--warmup`` steps (compilation happens there), then ``--steps`` timed steps; a callback
synchronises the device and stamps the end of every step, the same clock for both. MFU = tokens/s x
FLOPs per token (6·N + 12·layers·hidden·context, nanoGPT's and PaLM's count) / the card's dense
bf16 peak (``llmops.models.training.preflight.PEAK_TFLOPS``, or ``--peak-tflops``). Throughput does not depend on
what the tokens say, so the blocks are seeded random ids: no tokenizer or corpus is needed on the
GPU machine.

    python bench/bench_gpu.py                          # on CUDA: ~5 min on an H100/H200
    python bench/bench_gpu.py --batch 16 --steps 20    # smaller
    python bench/bench_gpu.py --device cpu --preset tiny --precision fp32 --no-compile --batch 4 \\
        --block-size 64 --warmup 2 --steps 3 --out /tmp/gpu_smoke   # the script itself, on a CPU

Without a CUDA device (and without ``--device cpu``) it says so and measures nothing. Writes
bench/results/gpu_throughput.json and .md.
"""
from __future__ import annotations

import argparse
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_training import SEED, Run, run_ours, run_trainer
from common import RESULTS, markdown_table, median, run_meta, write_results

TARGET_MFU = 0.40


def make_blocks(n: int, block: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, vocab, size=(n, block)).astype(np.int32)


def make_model(preset: str, vocab: int, block: int):
    from llmops.models.model.presets import build_config
    from llmops.models.training.setup import build_model

    return build_model(build_config(preset, vocab_size=vocab, context_length=block, bos_token_id=0, eos_token_id=0),
                       SEED)


def synced_hook(run: Run, device: str) -> Callable[[], None]:
    """Stamp the end of each step once the device has finished it (CUDA runs asynchronously)."""
    import torch

    def after_step() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        run.step_ends.append(time.perf_counter())
        run.resumes.append(run.step_ends[-1])
    return after_step


def measure(variant: str, args, data: tuple) -> dict:
    import torch

    from llmops.models.training.preflight import flops_per_token, peak_flops

    model = make_model(args.preset, args.vocab, args.block_size)
    fpt = flops_per_token(model, args.block_size)
    run = Run(variant, 1)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner = run_ours if variant == "ours" else run_trainer
    runner(model, data, args.batch, args.warmup + args.steps + 1, run, synced_hook(run, args.device),
           compile=args.compile, device=args.device, precision=args.precision)
    steps = run.own_steps(args.warmup, args.steps)
    tokens_per_s = args.batch * args.block_size / median(steps)
    peak = peak_flops(torch.device(args.device), args.precision, args.peak_tflops)
    row = {"variant": variant, "median_step_s": median(steps), "tokens_per_s": tokens_per_s,
           "best_step_s": min(steps), "warmup_s": run.step_ends[args.warmup - 1] - run.call_start,
           "flops_per_token": fpt, "mfu": tokens_per_s * fpt / peak if peak else None,
           "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None}
    if run.logged_tokens_per_s:
        row["metrics_jsonl_tokens_per_s_median"] = median(
            run.logged_tokens_per_s[args.warmup: args.warmup + args.steps])
    print(f"  {variant:8s} {tokens_per_s:12,.0f} tokens/s, median step {median(steps) * 1000:.1f} ms"
          + (f", MFU {row['mfu']:.1%}" if row["mfu"] else ""), flush=True)
    del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    by = {r["variant"]: r for r in rows}
    table = markdown_table(
        ["variant", "tokens/s", "median step ms", "best step ms", "warm-up s (compile)", "MFU", "peak GPU memory GB"],
        [[r["variant"], f"{r['tokens_per_s']:,.0f}", f"{r['median_step_s'] * 1000:.1f}",
          f"{r['best_step_s'] * 1000:.1f}", f"{r['warmup_s']:.1f}", f"{r['mfu']:.1%}" if r["mfu"] else "-",
          f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] else "-"] for r in rows])
    lines = [
        "# GPU throughput and MFU: our loop vs the HF Trainer",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['device_name']} · torch {meta['torch']}, "
        f"transformers {meta['transformers']}",
        "",
        f"`{meta['preset']}` preset, {meta['parameters']:,} parameters, vocab {meta['vocab']}, batch {meta['batch']} x "
        f"{meta['block_size']} tokens, {meta['precision']}, compile={meta['compile']}, {meta['warmup']} warm-up + "
        f"{meta['steps']} timed steps each; peak {meta['peak_tflops'] or '-'} TFLOP/s; "
        f"{meta['flops_per_token'] / 1e9:.2f} GFLOP per token.",
        "",
        table,
        "",
    ]
    if "ours" in by and "trainer" in by:
        lines += [f"ours / trainer tokens/s: **{by['ours']['tokens_per_s'] / by['trainer']['tokens_per_s']:.3f}**", ""]
    if by.get("ours", {}).get("mfu"):
        met = "met" if by["ours"]["mfu"] >= TARGET_MFU else "missed"
        lines += [f"Our MFU {by['ours']['mfu']:.1%} against the target of {TARGET_MFU:.0%}: **{met}**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak at --precision")
    parser.add_argument("--variants", nargs="+", default=["ours", "trainer"], choices=["ours", "trainer"])
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_throughput", help="path stem of the .json/.md")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (--device cpu runs the script on the CPU as a smoke test)")
        return
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_warning()
    logging.getLogger("llmops").setLevel(logging.WARNING)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both loops: fp32 leftovers (the optimizer) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    blocks = make_blocks(args.batch * (args.warmup + args.steps + 2), args.block_size, args.vocab)
    data = (blocks, blocks[: args.batch], None)
    model = make_model(args.preset, args.vocab, args.block_size)
    params = sum(p.numel() for p in model.parameters())
    del model
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{args.preset}: {params:,} parameters on {device_name}", flush=True)
    rows = [measure(v, args, data) for v in args.variants]
    from llmops.models.training.preflight import peak_flops

    peak = peak_flops(torch.device(args.device), args.precision, args.peak_tflops)
    meta = run_meta(torch=torch.__version__, transformers=transformers.__version__, device_name=device_name,
                    preset=args.preset, parameters=params, vocab=args.vocab, batch=args.batch,
                    block_size=args.block_size, precision=args.precision, compile=args.compile, warmup=args.warmup,
                    steps=args.steps, peak_tflops=peak / 1e12 if peak else None,
                    flops_per_token=rows[0]["flops_per_token"])
    text = markdown(rows, meta)
    print(text)
    write_results(args.out.name, {"meta": meta, "results": rows, "target_mfu": TARGET_MFU}, text, args.out.parent)


if __name__ == "__main__":
    main()
