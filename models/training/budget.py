"""Sizing a model to a wall-clock budget (``model.preset=auto``): the shape that reaches the fewest held-out bits in
the budget on this machine, read from a scaling table measured here (bench/bench_scaling.py).

At a fixed budget a bigger model sees fewer tokens: on 2 CPU cores and two minutes, a 0.4 M-parameter model
beats a 2 M one by 0.45 bits per character (bench/results/scaling.md). The table gives, for a few budgets,
each shape's held-out bits per character and its training tokens/s on the machine that measured it. Here, the
budget is scaled by how fast this machine trains the reference shape (a faster machine has more tokens to
spend in the same seconds), each shape's bits are interpolated in the log of that budget, and the lowest wins.
The lr schedule already ends at the budget (warmup, then cosine on time progress: models/training/optim.py).
"""
from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from llmops.models.model.presets import build_config

# name -> hidden size, MLP width, heads, layers (Llama-style like the presets: RMSNorm, SwiGLU, RoPE, tied head)
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "h64-l3": (64, 176, 2, 3), "h96-l2": (96, 256, 3, 2), "h96-l3": (96, 256, 3, 3), "h128-l3": (128, 352, 4, 3),
    "h128-l4": (128, 352, 4, 4),
}
REFERENCE = "h128-l4"  # the `mini` preset: how fast this machine runs it, against the table's machine, sets the speed
# bench/results/scaling.json (bench/bench_scaling.py) on a 2-vCPU AMD EPYC (AVX2), torch 2.13 CPU, 2 threads:
# budget seconds -> shape -> held-out bits per character; the probe's tokens/s of the reference shape there
TABLE_BITS: dict[float, dict[str, float]] = {
    60.0: {"h64-l3": 2.7, "h96-l2": 2.6321, "h96-l3": 2.6726, "h128-l3": 2.7535, "h128-l4": 3.1102},
    240.0: {"h64-l3": 2.5273, "h96-l2": 2.5178, "h96-l3": 2.4319, "h128-l3": 2.537, "h128-l4": 2.5231},
}
TABLE_PROBE_TOKENS_PER_S = 8264.0
EXTRAPOLATE = 4.0  # predictions are carried at most this factor past the table's shortest and longest budgets
# the probe's workload, the table's own (BPE 512, block 128, batch 16): a machine is compared with the table's on the
# same work, whatever the run's vocabulary or batch (a 32k vocabulary would make the head, not the machine, the cost)
PROBE_VOCAB, PROBE_BLOCK, PROBE_BATCH = 512, 128, 16


def shape_overrides(name: str) -> dict[str, Any]:
    """The transformers config fields of shape ``name`` (over the `mini` preset's, which it shares otherwise)."""
    hidden, mlp, heads, layers = SHAPES[name]
    return {"hidden_size": hidden, "intermediate_size": mlp, "num_attention_heads": heads,
            "num_key_value_heads": heads, "num_hidden_layers": layers}


@dataclass(frozen=True)
class BudgetPlan:
    shape: str
    overrides: dict[str, Any]
    speed: float  # this machine's tokens/s on the reference shape, over the table's
    predicted_bits: dict[str, float]  # per shape, at this budget on this machine (the table's units)
    reason: str


def predicted_bits(shape: str, effective_budget_s: float) -> float:
    """The table's bits for ``shape`` at ``effective_budget_s``, linear in the log of the budget between measured
    budgets, and carried on past the ends with the slope of the nearest pair (a budget of 8 minutes is not 4), up
    to ``EXTRAPOLATE`` times beyond them: further out the table says nothing, and the prediction stays put."""
    budgets = sorted(b for b in TABLE_BITS if shape in TABLE_BITS[b])
    if len(budgets) == 1:
        return TABLE_BITS[budgets[0]][shape]
    x = min(max(math.log(effective_budget_s), math.log(budgets[0] / EXTRAPOLATE)),
            math.log(budgets[-1] * EXTRAPOLATE))
    # the measured pair around x, or the nearest pair past either end
    i = min(max(bisect.bisect_right([math.log(b) for b in budgets], x) - 1, 0), len(budgets) - 2)
    lo, hi = budgets[i], budgets[i + 1]
    y0, y1 = TABLE_BITS[lo][shape], TABLE_BITS[hi][shape]
    return y0 + (y1 - y0) * (x - math.log(lo)) / (math.log(hi) - math.log(lo))


def plan(budget_s: float, speed: float) -> BudgetPlan:
    """The shape with the fewest predicted bits after ``budget_s`` seconds on a machine ``speed`` times the table's."""
    effective = budget_s * speed
    bits = {s: predicted_bits(s, effective) for s in SHAPES if all(s in row for row in TABLE_BITS.values())}
    best = min(bits, key=bits.get)
    reason = (f"{best} ({_parameters(best):,} trunk parameters): the fewest held-out bits in {budget_s:.0f} s on this "
              f"machine ({speed:.2f}x the table's speed), {bits[best]:.3f} bits/char in the table's units against "
              + ", ".join(f"{s} {b:.3f}" for s, b in sorted(bits.items(), key=lambda kv: kv[1]) if s != best))
    return BudgetPlan(best, shape_overrides(best), speed, bits, reason)


def _parameters(shape: str) -> int:
    hidden, mlp, _, layers = SHAPES[shape]
    return layers * (4 * hidden * hidden + 3 * hidden * mlp)


def probe_tokens_per_s(steps: int = 3) -> float:
    """Tokens/s of forward + backward of the reference shape on the CPU, on the table's workload (random tokens:
    the content does not change the cost), the median of ``steps`` after a warm-up."""
    config = build_config("mini", vocab_size=PROBE_VOCAB, context_length=PROBE_BLOCK, bos_token_id=0, eos_token_id=0,
                          overrides=shape_overrides(REFERENCE))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).train()
        ids = torch.randint(0, PROBE_VOCAB, (PROBE_BATCH, PROBE_BLOCK))
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            times.append(time.perf_counter() - t0)
    return ids.numel() / sorted(times[1:])[len(times[1:]) // 2]


def machine_speed() -> float:
    """How many times faster than the table's machine this one trains the reference shape."""
    return probe_tokens_per_s() / TABLE_PROBE_TOKENS_PER_S
