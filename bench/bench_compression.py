"""Benchmark: compression that earns its place (issue 15), side by side in one run.

1. **speed** (``--parts speed``): an untrained GPT-2-124M-class Llama (the ``gpt2-124m`` preset, vocabulary
   ``--vocab``) as fp32, int8 (``torch.ao`` dynamic, per channel) and bf16, each through the loader the pipeline
   uses: greedy decode tokens/s at batch 1 and 8 (``--new-tokens`` each), prefill ms of 256 tokens, size on disk.
   Beside each: this machine's measured memory read bandwidth and the variant's batch-1 decode ceiling (bandwidth /
   bytes of matmul weights read per token). Targets: best int8 >= 3.5x fp32 at batch 1; every servable variant
   >= 60% of its ceiling.
2. **quality** (``quality``): the ``small`` preset trained ``--teacher-minutes`` (>= 10) on the standard library's
   docstrings (+ Tiny Shakespeare when ../shared/data has it); each variant's bits/byte beside fp32's on the test
   split with a paired bootstrap 95% CI, mean KL and top-1 agreement (the compress stage's own ``assess``).
   Targets: int8 within +1%, bf16 within +0.2%.
3. **distillation** (``distill``): a student of about half the teacher's parameters (``small`` with
   ``--student-layers`` layers) distilled from that teacher, vs. the same student trained from scratch on the same
   data for the same wall-clock (``--student-minutes`` each). Target: the distilled student's validation
   bits/byte at least 3% lower.
4. **pruning** (``prune``): the teacher pruned to ``--keep`` of its trunk (depth and width) and healed by
   distillation, vs. a model of the same pruned shape trained from scratch for the same wall-clock. Targets: pruned +
   healed better; decode speed-up over the teacher >= 1.7x.

    python bench/bench_compression.py                         # all four, ~45 min on 2 cores
    python bench/bench_compression.py --parts speed           # ~5 min
    python bench/bench_compression.py --quick                 # smoke run: tiny budgets

Writes bench/results/compression.json and compression.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, SHAKESPEARE, load_average, markdown_table, run_meta, write_results

PARTS = ("speed", "quality", "distill", "prune")


def memory_bandwidth_gbs(mb: int = 1024, runs: int = 5) -> float:
    """Read bandwidth as a reduction over a buffer far larger than the caches sees it (GB/s, best of ``runs``)."""
    x = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    x.sum()
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def matmul_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads: every Linear (float or int8) and the LM head."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight = module.weight()
            total += weight.numel() + weight.q_per_channel_scales().numel() * 8
        elif isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def part_speed(args, work: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from llmops.models.compression.measure import decode_tokens_per_s, prefill_ms
    from llmops.models.model.loading import load_model
    from llmops.models.model.presets import build_config
    from llmops.models.model.variants import make_variant, save_variant

    config = build_config("gpt2-124m", vocab_size=args.vocab, context_length=1024, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    folder = work / "speed-fp32"
    model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(args.vocab)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        eos_token="t0", pad_token="t0")
    tokenizer.save_pretrained(folder)
    texts = [" ".join(f"t{(i * 7919 + j * 104729) % args.vocab}" for j in range(300)) for i in range(8)]
    bandwidth = memory_bandwidth_gbs()
    rows = {}
    for variant in ("fp32", "int8", "bf16"):
        if variant == "fp32":
            vmodel, size = model, (folder / "model.safetensors").stat().st_size
        else:
            weights = save_variant(make_variant(model, variant), variant, work / f"speed-{variant}")
            vmodel, _ = load_model(folder, variant, variant_dir=work / f"speed-{variant}")
            size = weights.stat().st_size
        step_bytes = matmul_weight_bytes(vmodel)
        speed = {b: decode_tokens_per_s(vmodel, tokenizer, texts, b, args.new_tokens, args.speed_runs)
                 for b in (1, 8)}
        ceiling = bandwidth * 1e9 / step_bytes
        rows[variant] = {"tokens_per_s": speed, "prefill_256_ms": prefill_ms(vmodel, tokenizer, texts, 256, 3),
                         "bytes_on_disk": size, "weight_bytes_per_token": step_bytes,
                         "ceiling_tokens_per_s": ceiling, "share_of_ceiling": speed[1] / ceiling}
        print(f"speed {variant}: {speed[1]:.1f} / {speed[8]:.1f} tokens/s (ceiling {ceiling:.1f})", flush=True)
        del vmodel
    rows.update(torchao_rows(model, tokenizer, texts, args))
    for row in rows.values():
        row["speedup_b1"] = row["tokens_per_s"][1] / rows["fp32"]["tokens_per_s"][1]
        row["speedup_b8"] = row["tokens_per_s"][8] / rows["fp32"]["tokens_per_s"][8]
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "vocab": args.vocab, "bandwidth_gbs": bandwidth, "threads": torch.get_num_threads(),
            "variants": rows}


def torchao_rows(model, tokenizer, texts, args) -> dict[str, dict]:
    """torchao's int8 paths on the same model, when torchao is importable (it is not a dependency): the variant
    llmops ships must be the faster int8 (issue 15)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        print("torchao is not installed: its int8 paths are not measured", flush=True)
        return {}
    from llmops.models.compression.measure import decode_tokens_per_s, prefill_ms

    rows = {}
    for name, config in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                         ("torchao int8 dynamic act+weight", Int8DynamicActivationInt8WeightConfig())):
        qmodel = copy.deepcopy(model)
        quantize_(qmodel, config)
        speed = {b: decode_tokens_per_s(qmodel, tokenizer, texts, b, args.new_tokens, args.speed_runs) for b in (1, 8)}
        rows[name] = {"tokens_per_s": speed, "prefill_256_ms": prefill_ms(qmodel, tokenizer, texts, 256, 3),
                      "bytes_on_disk": None, "weight_bytes_per_token": None, "ceiling_tokens_per_s": None,
                      "share_of_ceiling": None}
        print(f"speed {name}: {speed[1]:.1f} / {speed[8]:.1f} tokens/s", flush=True)
        del qmodel
    return rows


def corpus_config(args, preset: str, minutes: float, overrides: dict | None = None):
    from llmops.infra.config import PipelineConfig

    sources = ["builtin://stdlib-docstrings"] + ([str(SHAKESPEARE)] if SHAKESPEARE.is_file() else [])
    cfg = PipelineConfig()
    return cfg.model_copy(update={
        "model_name": "bench-compress",
        "data": cfg.data.model_copy(update={"sources": sources}),
        "model": cfg.model.model_copy(update={"preset": preset, "overrides": overrides or {}}),
        "train": cfg.train.model_copy(update={"max_minutes": minutes, "time_budget_s": None, "max_steps": 1_000_000,
                                              "device": "cpu", "eval_every": 100}),
    })


class Corpus:
    """The data every arm trains on: ingested, tokenized and packed once (content-addressed in the store)."""

    def __init__(self, args, work: Path):
        from llmops.infra.store import LocalStore
        from llmops.models.data import build_tokenizer, ingest, load_tokenizer, pack_dataset, read_split

        self.store, self.cache = LocalStore(work / "store"), work / "cache"
        cfg = corpus_config(args, "small", args.teacher_minutes)
        self.dataset = ingest(cfg.data, self.store, model_name=cfg.model_name, cache_dir=self.cache)
        self.tok_ref = build_tokenizer(self.store, cfg.tokenizer, self.dataset,
                                       read_split(self.store, self.dataset, "train"))
        self.tokenizer = load_tokenizer(self.store, self.tok_ref, self.cache)
        splits = {s: read_split(self.store, self.dataset, s) for s in ("train", "validation")}
        self.packed = pack_dataset(self.store, self.dataset, self.tok_ref, splits, self.tokenizer,
                                   cfg.train.block_size, 1, "pack")
        self.test = read_split(self.store, self.dataset, "test")[:args.max_docs]
        self.validation = read_split(self.store, self.dataset, "validation")[:args.max_docs]

    def train(self, cfg):
        from llmops.models.training import run_training

        return run_training(self.store, self.packed, self.tok_ref, self.tokenizer, cfg.model, cfg.train, self.cache)

    def model(self, run):
        from llmops.models.model.loading import download_run_model, load_model

        return load_model(download_run_model(self.store, run, self.cache))[0]

    def measured(self, run) -> dict[str, Any]:
        """The run's model, loaded once: its parameters, validation bits/byte and decode tokens/s at batch 1."""
        from llmops.models.compression.measure import decode_tokens_per_s
        from llmops.models.evaluation.scoring import bits_per_byte, score_documents

        model = self.model(run)
        return {"parameters": run.parameters,
                "val_bits_per_byte": bits_per_byte(score_documents(model, self.tokenizer, self.validation)),
                "tokens_per_s_b1": decode_tokens_per_s(model, self.tokenizer, self.validation, 1, 32, 3)}


def part_quality(args, corpus: Corpus, teacher) -> dict[str, Any]:
    from llmops.infra.config import CompressConfig
    from llmops.models.compression.stage import Parent, assess, speeds
    from llmops.models.evaluation.scoring import bits_per_byte
    from llmops.models.model.loading import download_run_model, load_model
    from llmops.models.model.variants import make_variant, save_variant

    cfg = CompressConfig(require_faster=False, bootstrap_samples=2000)
    model_dir = download_run_model(corpus.store, teacher, corpus.cache)
    model, tokenizer = load_model(model_dir)
    parent = Parent(model, tokenizer, corpus.test, (model_dir / "model.safetensors").stat().st_size,
                    speeds(model, tokenizer, corpus.test, cfg))
    out = {"teacher_run": teacher.run_id, "steps": teacher.steps, "train_s": teacher.wall_s,
           "parameters": teacher.parameters, "documents": len(corpus.test), "variants": {}}
    for variant in ("int8", "bf16"):
        folder = corpus.cache / "quality" / variant
        weights = save_variant(make_variant(model, variant), variant, folder)
        vmodel, _ = load_model(model_dir, variant, variant_dir=folder)
        report = assess(variant, vmodel, parent, cfg, uri=str(folder), sha256="-", size=weights.stat().st_size)
        out["variants"][variant] = report.model_dump(mode="json")
        print(f"quality {variant}: {report.bpb_increase:+.5f} bits/byte "
              f"(CI high {report.relative_increase_high:+.3%})", flush=True)
    out["parent_bits_per_byte"] = bits_per_byte(parent.scored())
    out["parent_tokens_per_s"] = parent.speed
    return out


def distill_arm(args, corpus: Corpus, teacher, student_model_cfg, minutes: float):
    from llmops.infra.config import DistillConfig
    from llmops.models.compression.distill import distill
    from llmops.models.model.loading import download_run_model

    cfg = corpus_config(args, "small", minutes)
    return distill(corpus.store, corpus.packed, corpus.tok_ref, corpus.tokenizer,
                   download_run_model(corpus.store, teacher, corpus.cache), student_model_cfg, cfg.train,
                   DistillConfig(), corpus.cache)


def part_distill(args, corpus: Corpus, teacher) -> dict[str, Any]:
    overrides = {"num_hidden_layers": args.student_layers}
    scratch_cfg = corpus_config(args, "small", args.student_minutes, overrides)
    distilled = distill_arm(args, corpus, teacher, scratch_cfg.model, args.student_minutes)
    scratch = corpus.train(scratch_cfg)
    return arms_result(corpus, teacher, {"distilled": distilled, "scratch": scratch}, "distilled", "scratch")


def part_prune(args, corpus: Corpus, teacher) -> dict[str, Any]:
    from transformers import AutoConfig

    from llmops.infra.config import PruneConfig
    from llmops.models.compression.students import prune_model_dir
    from llmops.models.data import read_split
    from llmops.models.model.loading import download_run_model

    pruned = prune_model_dir(corpus.store, download_run_model(corpus.store, teacher, corpus.cache),
                             read_split(corpus.store, corpus.dataset, "train"),
                             PruneConfig(enabled=True, keep=args.keep, axes="both"), corpus.cache)
    local = corpus.cache / corpus.store.key_for(pruned.uri)
    shape = AutoConfig.from_pretrained(local)
    healed_cfg = corpus_config(args, "small", args.student_minutes)
    healed_model = healed_cfg.model.model_copy(update={"pretrained": str(local)})
    healed = distill_arm(args, corpus, teacher, healed_model, args.student_minutes)
    scratch_cfg = corpus_config(args, "small", args.student_minutes, {
        "num_hidden_layers": shape.num_hidden_layers, "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim})
    scratch = corpus.train(scratch_cfg)
    result = arms_result(corpus, teacher, {"pruned_healed": healed, "scratch_same_shape": scratch},
                         "pruned_healed", "scratch_same_shape")
    result["pruned"] = pruned.model_dump(mode="json")
    return result


def arms_result(corpus: Corpus, teacher, arms: dict, better: str, than: str) -> dict[str, Any]:
    """Validation bits/byte of every arm (and the teacher), decode speed at batch 1, and the relative gap."""
    out = {"teacher": corpus.measured(teacher)}
    for name, run in arms.items():
        out[name] = {"run_id": run.run_id, "method": run.method, "steps": run.steps, "tokens_seen": run.tokens_seen,
                     "train_s": run.wall_s, **corpus.measured(run)}
        out[name]["speedup_vs_teacher"] = out[name]["tokens_per_s_b1"] / out["teacher"]["tokens_per_s_b1"]
        print(f"{name}: {out[name]['val_bits_per_byte']:.4f} bits/byte, {run.parameters:,} parameters", flush=True)
    out["relative_gain"] = 1 - out[better]["val_bits_per_byte"] / out[than]["val_bits_per_byte"]
    return out


def _tps(row: dict, batch: int) -> float:
    """Tokens/s at ``batch`` (int keys in memory, str keys once read back from the JSON)."""
    return row["tokens_per_s"].get(batch, row["tokens_per_s"].get(str(batch)))


def render(payload: dict[str, Any]) -> str:
    lines = ["# Compression benchmark", "", f"`{payload['meta']['command']}` on {payload['meta']['processor']} "
             f"({payload['meta']['cpus']} CPUs, torch threads {payload['meta']['settings']['threads']}), "
             f"{payload['meta']['date']}; load average {payload['meta']['load_before']} before, "
             f"{payload['meta'].get('load_after')} after.",
             ""]
    if "speed" in payload:
        s = payload["speed"]
        lines += [f"## 1. Speed: untrained {s['parameters'] / 1e6:.0f}M-parameter Llama (gpt2-124m preset, vocab "
                  f"{s['vocab']}), greedy, measured read bandwidth {s['bandwidth_gbs']:.1f} GB/s", "",
                  markdown_table(["variant", "tokens/s b1", "tokens/s b8", "× fp32 b1", "× fp32 b8",
                                  "prefill 256 (ms)", "size (MB)", "b1 ceiling", "share of ceiling"], [
                      [v, f"{_tps(r, 1):.1f}", f"{_tps(r, 8):.1f}", f"{r['speedup_b1']:.2f}",
                       f"{r['speedup_b8']:.2f}", f"{r['prefill_256_ms']:.0f}",
                       *(["—", "—", "—"] if r["bytes_on_disk"] is None else [
                           f"{r['bytes_on_disk'] / 1e6:.0f}", f"{r['ceiling_tokens_per_s']:.1f}",
                           f"{r['share_of_ceiling']:.0%}"])]
                      for v, r in s["variants"].items()]), ""]
    if "quality" in payload:
        q = payload["quality"]
        lines += [f"## 2. Quality: `small` trained {q['train_s'] / 60:.1f} min ({q['steps']} steps, "
                  f"{q['parameters']:,} parameters), {q['documents']} test documents", "",
                  markdown_table(["variant", "bits/byte", "increase (95% CI)", "CI high / fp32", "mean KL",
                                  "top-1 agreement"], [
                      [v, f"{r['bits_per_byte']:.4f}", f"{r['bpb_increase']:+.5f} [{r['ci_low']:+.5f}, "
                       f"{r['ci_high']:+.5f}]", f"{r['relative_increase_high']:+.3%}", f"{r['mean_kl']:.5f}",
                       f"{r['top1_agreement']:.4f}"] for v, r in q["variants"].items()]), "",
                  f"fp32: {q['parent_bits_per_byte']:.4f} bits/byte.", ""]
    for key, title in (("distill", "3. Distillation: student distilled vs trained from scratch, same wall-clock"),
                       ("prune", "4. Pruning + healing vs the same shape from scratch, same wall-clock")):
        if key in payload:
            d = payload[key]
            arms = [k for k in d if isinstance(d[k], dict) and "val_bits_per_byte" in d[k]]
            lines += [f"## {title}", "", markdown_table(
                ["arm", "parameters", "steps", "train (s)", "validation bits/byte", "decode tokens/s b1",
                 "× teacher"], [[a, f"{d[a]['parameters']:,}", d[a].get("steps", "—"),
                                 f"{d[a]['train_s']:.0f}" if "train_s" in d[a] else "—",
                                 f"{d[a]['val_bits_per_byte']:.4f}",
                                 f"{d[a]['tokens_per_s_b1']:.1f}", f"{d[a].get('speedup_vs_teacher', 1):.2f}"]
                                for a in arms]), "",
                f"Relative gain of the first arm over the second: {d['relative_gain']:+.2%}.", ""]
    for part, meta in payload.get("carried", {}).items():
        lines += [f"Part `{part}` is carried from an earlier run: `{meta['command']}`, {meta['date']}.", ""]
    if payload.get("targets"):
        lines += ["## Targets", "", markdown_table(["target", "measured", "met"], payload["targets"]), ""]
    return "\n".join(lines)


def targets(payload: dict[str, Any]) -> list[list[str]]:
    rows = []
    if "speed" in payload:
        v = payload["speed"]["variants"]
        rows.append(["int8 ≥ 3.5× fp32 decode at batch 1", f"{v['int8']['speedup_b1']:.2f}×",
                     "yes" if v["int8"]["speedup_b1"] >= 3.5 else "no"])
        for name, r in v.items():
            if r["share_of_ceiling"] is None:
                continue
            rows.append([f"{name} ≥ 60% of its bandwidth ceiling", f"{r['share_of_ceiling']:.0%}",
                         "yes" if r["share_of_ceiling"] >= 0.6 else "no"])
        others = {n: _tps(r, 1) for n, r in v.items() if n.startswith("torchao")}
        if others:
            best = max(others, key=others.get)
            rows.append(["shipped int8 (torch.ao) is the faster int8 at batch 1",
                         f"{_tps(v['int8'], 1):.1f} vs {best} {others[best]:.1f} tokens/s",
                         "yes" if _tps(v["int8"], 1) >= others[best] else "no"])
    if "quality" in payload:
        for name, limit in (("int8", 0.01), ("bf16", 0.002)):
            r = payload["quality"]["variants"][name]
            rows.append([f"{name} bits/byte within +{limit:.1%} (CI high)", f"{r['relative_increase_high']:+.3%}",
                         "yes" if r["relative_increase_high"] <= limit else "no"])
    if "distill" in payload:
        gain = payload["distill"]["relative_gain"]
        rows.append(["distilled student ≥ 3% lower bits/byte than scratch", f"{gain:+.2%}",
                     "yes" if gain >= 0.03 else "no"])
    if "prune" in payload:
        p = payload["prune"]
        rows.append(["pruned + healed better than scratch, same shape", f"{p['relative_gain']:+.2%}",
                     "yes" if p["relative_gain"] > 0 else "no"])
        rows.append(["pruned decode ≥ 1.7× the teacher", f"{p['pruned_healed']['speedup_vs_teacher']:.2f}×",
                     "yes" if p["pruned_healed"]["speedup_vs_teacher"] >= 1.7 else "no"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--speed-runs", type=int, default=3)
    parser.add_argument("--teacher-minutes", type=float, default=10.0)
    parser.add_argument("--student-minutes", type=float, default=5.0)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--max-docs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the store here (a rerun reuses trained runs)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    parser.add_argument("--render", action="store_true", help="rewrite compression.md from compression.json")
    args = parser.parse_args()
    if args.render:
        payload = json.loads((RESULTS / "compression.json").read_text())
        payload["targets"] = targets(payload)
        print(f"wrote {write_results('compression', payload, render(payload))}")
        return
    if args.quick:
        args.vocab, args.new_tokens, args.speed_runs = 4096, 8, 1
        args.teacher_minutes, args.student_minutes, args.max_docs = 0.3, 0.2, 40
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    payload: dict[str, Any] = {"meta": run_meta(load_before=load_average(), torch=torch.__version__,
                                                settings={k: str(v) for k, v in vars(args).items()})}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if "speed" in parts:
            payload["speed"] = part_speed(args, work)
        if set(parts) & {"quality", "distill", "prune"}:
            corpus = Corpus(args, work)
            teacher = corpus.train(corpus_config(args, "small", args.teacher_minutes))
            print(f"teacher: {teacher.steps} steps in {teacher.wall_s:.0f} s", flush=True)
            for name, fn in (("quality", part_quality), ("distill", part_distill), ("prune", part_prune)):
                if name in parts:
                    payload[name] = fn(args, corpus, teacher)
    payload["meta"]["load_after"] = load_average()
    previous = RESULTS / "compression.json"
    if not args.quick and previous.is_file():  # parts not rerun keep their last results, with that run's meta
        old = json.loads(previous.read_text())
        for part in set(PARTS) - set(parts):
            if part in old:
                payload[part] = old[part]
                payload.setdefault("carried", {})[part] = old.get("carried", {}).get(part, old["meta"])
    payload["targets"] = targets(payload)
    md = render(payload)
    print(md)
    if args.quick:
        print("(--quick: results not written)")
    else:
        print(f"wrote {write_results('compression', payload, md)}")


if __name__ == "__main__":
    main()
