"""Benchmark: the OpenAI-compatible server under load, one generation at a time vs. batched, side by side.

A real uvicorn server is started in a process of its own (``llmops.models.serving.start_server``) for each engine
configuration, and ``openai.AsyncOpenAI`` (``max_retries=0``) drives it from ``--clients`` concurrent clients in
a closed loop: each sends a completion request (``--max-tokens`` 32, ``--temperature`` 0.8, a prompt drawn from a
fixed list of first lines of stdlib docstrings), waits for the answer, sends the next. Engine configurations:

* **one-at-a-time**: ``ServeConfig(max_batch_size=1)``; **batched**: ``ServeConfig()``'s default;
  with ``--baseline-ref REF``, **previous (REF)**: the server of another commit (a git worktree put first on the
  server's PYTHONPATH), e.g. the last one before continuous batching, against which the 8x target is then measured.

One client in ``--stream-every`` (8; client 0 always) streams, and time to first token is measured on those
answers; the others ask without streaming (an SSE chunk per token, parsed by the openai client, is client CPU that a
2-core machine takes from the server).

Every configuration serves with capture on (the server's own flush settings), ``serve.max_queue`` = ``--max-queue``
(256: 200 clients are admitted; any 429 is reported, and the client waits its Retry-After), torch's thread count
left as the server leaves it. Each level runs a warm-up (at least ``--warmup`` seconds, and until every client has
had an answer, so the start-up wave is out), then a measured window of ``--duration`` seconds, then a drain (the
clients stop sending; requests in flight finish). It reports:

* completion tokens/s and requests/s in the window: each 200 answer's ``usage.completion_tokens`` (and the answer)
  spread evenly over the time it was producing them, the part inside the window counted, over the window's length
  (batches finishing together do not quantise it); the JSON adds every answer's tokens over the level's wall time;
* p50/p99 latency and time to first token (``stream=True``: the first chunk carrying text) of the answers received
  in the window. A server that answers 400 to ``stream=True`` gets non-streamed requests, TTFT = latency (``*``);
* over the whole level: status counts (200, 429, other) and capture: after the drain ``POST /admin/flush``, then
  the traffic records (``traffic/<model>/...`` JSONL) whose id is an acknowledged (200) response's; lost =
  acknowledged - found.

Targets (computed): batched tokens/s at 64 clients >= 8x the previous commit's server (one-at-a-time without
``--baseline-ref``); p99 latency at 200 clients < 3x its p50
(batched); no lost capture record; no status but 200 and 429.

The model: ``--store [URI] --model NAME`` takes the version ``--alias`` points at (default: ``make run``'s store and
model) and serves a copy of it from a scratch store, so the benchmark's traffic never lands in that store's log;
without ``--store``, a ``mini`` preset Llama with random weights and a BPE tokenizer trained on the stdlib
docstrings (PipelineConfig's vocabulary and block size), registered in the scratch store.

    python bench/bench_serving.py                          # 1, 8, 64, 200 clients, 20 s each, both configurations
    python bench/bench_serving.py --quick                  # smoke run: 1 and 8 clients, 3 s each
    python bench/bench_serving.py --store --clients 64     # make run's model, one level

Writes bench/results/serving.json and serving.md.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, load_average, markdown_table, max_rss_mb, run_meta, write_results

PRESET = "mini"
ALIAS = "production"


@dataclass
class Outcome:
    """One request; status: "200", "429", another HTTP status or the exception's name; times from perf_counter."""

    start: float
    end: float
    status: str
    tokens: int = 0
    ttft: Optional[float] = None
    response_id: Optional[str] = None
    retry_after: float = 0.0
    usage_missing: bool = False


def load_prompts(count: int) -> list[str]:
    """``count`` short English prompts, the same on every run of one Python: first lines of stdlib docstrings."""
    from llmops.models.data.corpus import stdlib_docstrings

    lines = sorted({d.text.strip().splitlines()[0].strip() for d in stdlib_docstrings() if d.text.strip()})
    good = [s for s in lines if 30 <= len(s) <= 100 and s.isascii() and s[0].isupper() and s.endswith(".")]
    step = max(1, len(good) // count)
    return good[::step][:count]


def build_model(store, name: str, cache: Path, seed: int) -> dict[str, Any]:
    """A ``mini`` Llama with random weights and a BPE trained on the stdlib docstrings, registered at ALIAS."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmops.infra.config import PipelineConfig
    from llmops.models.data.corpus import stdlib_docstrings
    from llmops.models.data.tokenizer import train_bpe
    from llmops.models.model.presets import build_config
    from llmops.models.release.registry import Registry

    cfg = PipelineConfig()
    tokenizer = train_bpe([d.text for d in stdlib_docstrings()], cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    config = build_config(PRESET, vocab_size=len(tokenizer), context_length=cfg.train.block_size,
                          bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
    registry = Registry(store, name)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ref = registry.register(Path(tmp))
    registry.set_alias(ALIAS, ref.version, "bench: a random mini model")
    params = sum(p.numel() for p in model.parameters())
    return {"source": "built", "name": name, "version": ref.version,
            "description": f"`{PRESET}` preset, random (untrained) weights, {params / 1e6:.2f} M parameters, "
                           f"BPE {len(tokenizer)} on stdlib docstrings, context {cfg.train.block_size}"}


def copy_model(uri: str, name: str, ref: str, store) -> dict[str, Any]:
    """Copy the version ``ref`` (an alias or a number) of ``name`` from the store at ``uri`` into ``store``."""
    from llmops.infra.store import open_store
    from llmops.models.release.registry import Registry

    source = open_store(uri)
    registry = Registry(source, name)
    version = registry.resolve(ref)
    prefix = f"{registry.root}/versions/{version}/"
    for key in source.list(prefix):
        store.put_bytes(key, source.get_bytes(key))
    Registry(store, name).set_alias(ALIAS, version, f"bench: a copy of {source.uri} {name}:{version}")
    return {"source": source.uri, "name": name, "version": version,
            "description": f"{name} version {version} ({ref}) from {source.uri}, served from a scratch copy"}


def engine_configs(args: argparse.Namespace) -> dict[str, tuple[str, Optional[str]]]:
    """Name -> (the server's ServeConfig as JSON, a PYTHONPATH for the server: another commit's code, or None)."""
    from llmops.infra.config import ServeConfig

    base = {"port": 0, "reload_interval_s": 0, "capture": True, "max_queue": args.max_queue,
            "max_tokens_limit": max(256, args.max_tokens)}
    configs = {"one-at-a-time": (ServeConfig(**base, max_batch_size=1).model_dump_json(), None),
               "batched": (ServeConfig(**base).model_dump_json(), None)}
    configs = {k: v for k, v in configs.items() if k in args.configs}
    if args.baseline_ref:  # only the fields every commit's ServeConfig knows
        configs[f"previous ({args.baseline_ref})"] = (json.dumps(base), str(checkout(args.baseline_ref)))
    return configs


def checkout(ref: str) -> Path:
    """A PYTHONPATH under which ``import llmops`` is the code of ``ref`` (a git worktree, removed at exit)."""
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-ref-"))
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tmp / "tree"), ref], check=True)
    atexit.register(subprocess.run, ["git", "-C", str(root), "worktree", "remove", "--force", str(tmp / "tree")])
    (tmp / "path").mkdir()
    (tmp / "path" / "llmops").symlink_to(tmp / "tree")  # the repository root is the package (pyproject's mapping)
    return tmp / "path"


# -- the load ---------------------------------------------------------------------------------------
async def request_once(client, model: str, prompt: str, args: argparse.Namespace, stream: str) -> Outcome:
    """One completion request; never raises (an error is an Outcome with its status)."""
    import openai

    t0 = time.perf_counter()
    params = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature}
    try:
        if stream == "none":
            out = await client.completions.create(**params)
            return Outcome(t0, time.perf_counter(), "200", out.usage.completion_tokens if out.usage else 0,
                           None, out.id, usage_missing=out.usage is None)
        extra = {"stream_options": {"include_usage": True}} if stream == "stream+usage" else {}
        ttft, rid, usage, chunks = None, None, None, 0
        async for chunk in await client.completions.create(**params, stream=True, **extra):
            rid = rid or chunk.id
            if chunk.choices and any(c.text for c in chunk.choices):
                chunks += 1
                ttft = ttft if ttft is not None else time.perf_counter() - t0
            usage = chunk.usage or usage
        tokens = usage.completion_tokens if usage else chunks  # without usage: one chunk per token, presumably
        return Outcome(t0, time.perf_counter(), "200", tokens, ttft, rid, usage_missing=usage is None)
    except openai.RateLimitError as exc:
        after = exc.response.headers.get("retry-after", "1")
        return Outcome(t0, time.perf_counter(), "429", retry_after=float(after) if after.isdigit() else 1.0)
    except openai.APIStatusError as exc:
        return Outcome(t0, time.perf_counter(), str(exc.status_code))
    except Exception as exc:  # connection errors, timeouts, a broken stream: counted as "other"
        return Outcome(t0, time.perf_counter(), type(exc).__name__)


async def probe_stream(client, model: str, prompt: str) -> str:
    """How TTFT can be measured: "stream+usage", "stream" (no stream_options) or "none" (400 to stream=True)."""
    import openai

    for mode, extra in (("stream+usage", {"stream_options": {"include_usage": True}}), ("stream", {})):
        try:
            chunks = [c async for c in await client.completions.create(
                model=model, prompt=prompt, max_tokens=2, stream=True, **extra)]
            return mode if chunks else "none"
        except openai.BadRequestError:
            continue
    return "none"


async def run_level(url: str, key: str, model: str, clients: int, prompts: list[str], args: argparse.Namespace,
                    stream: Optional[str]) -> tuple[str, list[Outcome], tuple[float, float], float]:
    """``clients`` closed loops: warm-up, window, drain. Returns (stream mode, outcomes, window, drain seconds)."""
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=args.timeout) as client:
        if stream is None:
            stream = await probe_stream(client, model, prompts[0])
        outcomes: list[Outcome] = []
        unanswered, answered, stop = set(range(clients)), asyncio.Event(), asyncio.Event()

        async def loop(i: int) -> None:
            rng = random.Random(args.seed * 100_003 + i)
            try:
                while not stop.is_set():
                    mode = stream if i % args.stream_every == 0 else "none"
                    outcome = await request_once(client, model, rng.choice(prompts), args, mode)
                    outcomes.append(outcome)
                    unanswered.discard(i)
                    if not unanswered:
                        answered.set()
                    if outcome.status != "200":  # a 429 waits its Retry-After; another error a moment
                        await asyncio.sleep(outcome.retry_after or 0.1)
            finally:
                unanswered.discard(i)
                if not unanswered:
                    answered.set()

        tasks = [asyncio.create_task(loop(i)) for i in range(clients)]
        await asyncio.sleep(args.warmup)
        await answered.wait()
        w0 = time.perf_counter()
        await asyncio.sleep(args.duration)
        w1 = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
        return stream, outcomes, (w0, w1), time.perf_counter() - w1


# -- numbers ----------------------------------------------------------------------------------------
def percentile(values: list[float], q: int) -> Optional[float]:
    """The ``q``-th percentile, interpolated between closest ranks (numpy's default); None for no values."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def captured_ids(store, model: str) -> set[str]:
    """Ids of every traffic record of ``model`` in the store (JSONL under ``traffic/<model>/``)."""
    ids = set()
    for key in store.list(f"traffic/{model}/"):
        if key.endswith(".jsonl"):
            ids.update(json.loads(line).get("id") for line in store.get_text(key).splitlines() if line.strip())
    return ids


def summarise(outcomes: list[Outcome], window: tuple[float, float], stream: str, clients: int) -> dict[str, Any]:
    """Rates: each 200 answer's tokens (and the answer itself) spread evenly over the time it was producing them
    (from its first text when streamed, else from its sending), the part inside the window counted: a steady-state
    rate that answers arriving in bursts (a batch finishing together) do not quantise. Percentiles: the answers
    received inside the window. ``level_tokens_per_s``: every answer's tokens over the whole level's wall time."""
    w0, w1 = window
    ok = [o for o in outcomes if o.status == "200"]
    done = [o for o in ok if w0 <= o.end < w1]
    latency = [o.end - o.start for o in done]
    streamed = [o.ttft for o in done if o.ttft is not None]  # the streaming clients' answers
    ttft = streamed if stream != "none" and streamed else latency
    statuses = Counter(o.status for o in outcomes)

    def inside(o: Outcome) -> float:
        begin = o.start + (o.ttft or 0.0)
        if o.end <= begin:
            return float(w0 <= o.end < w1)
        return max(0.0, min(o.end, w1) - max(begin, w0)) / (o.end - begin)

    def ms(v: Optional[float]) -> Optional[float]:
        return None if v is None else round(v * 1000, 1)

    tokens = sum(o.tokens * inside(o) for o in ok)
    wall = max((o.end for o in outcomes), default=w1) - min((o.start for o in outcomes), default=w0)
    return {"clients": clients, "window_s": round(w1 - w0, 2), "requests_in_window": len(done),
            "completion_tokens": round(tokens), "tokens_per_s": round(tokens / (w1 - w0), 1),
            "requests_per_s": round(sum(map(inside, ok)) / (w1 - w0), 2),
            "level_wall_s": round(wall, 2),
            "level_tokens_per_s": round(sum(o.tokens for o in ok) / wall, 1) if wall > 0 else 0.0,
            "latency_p50_ms": ms(percentile(latency, 50)), "latency_p99_ms": ms(percentile(latency, 99)),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "ttft_measured": stream != "none", "stream": stream,
            "usage_missing": sum(o.usage_missing for o in outcomes),
            "statuses": {"200": statuses.pop("200", 0), "429": statuses.pop("429", 0), "other": sum(statuses.values()),
                         "other_detail": dict(statuses)}, "requests_total": len(outcomes)}


# The server runs in a process of its own, as it would in production: the clients' own HTTP and JSON work would
# otherwise share its interpreter lock.
_SERVER = """
import json, sys
from pathlib import Path
from llmops.infra.config import ServeConfig
from llmops.infra.store import LocalStore
from llmops.models.serving import start_server
root, model, cfg, cache = sys.argv[1:5]
import llmops
print(json.dumps({"code": llmops.__file__}), file=sys.stderr, flush=True)
handle = start_server(LocalStore(root), model, ServeConfig.model_validate_json(cfg), Path(cache))
print(json.dumps({"url": handle.url, "admin_key": handle.admin_key}), flush=True)
sys.stdin.read()
handle.stop()
"""


@dataclass
class ServerProcess:
    url: str
    admin_key: str
    process: subprocess.Popen

    @classmethod
    def start(cls, store, model: str, cfg_json: str, cache: Path, pythonpath: Optional[str]) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
        process = subprocess.Popen([sys.executable, "-c", _SERVER, str(store.root), model, cfg_json, str(cache)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process exited with {process.wait()} before answering")
        return cls(**json.loads(line), process=process)

    def stop(self) -> None:
        self.process.stdin.close()  # the server stops gracefully: in-flight requests finish, capture is flushed
        self.process.wait(120)


def run_config(name: str, cfg: tuple[str, Optional[str]], store, model: str, cache: Path, prompts: list[str],
               args: argparse.Namespace) -> dict[str, Any]:
    """Start a server with ``cfg``, run every level against it, check capture after each, stop it."""
    import httpx

    handle = ServerProcess.start(store, model, cfg[0], cache, cfg[1])
    levels, stream = [], None
    try:
        for clients in args.clients:
            t0 = time.perf_counter()
            stream, outcomes, window, drain_s = asyncio.run(
                run_level(handle.url, handle.admin_key, model, clients, prompts, args, stream))
            level = summarise(outcomes, window, stream, clients)
            flush = httpx.post(f"{handle.url}/admin/flush", headers={"Authorization": f"Bearer {handle.admin_key}"},
                               timeout=120)
            ids = captured_ids(store, model)
            acked = [o.response_id for o in outcomes if o.status == "200"]
            found = sum(1 for i in acked if i in ids or f"{i}-0" in ids)
            level.update(acknowledged=len(acked), captured=found, lost=len(acked) - found,
                         flush={"status": flush.status_code, **(flush.json() if flush.is_success else {})},
                         warmup_s=round(window[0] - t0, 2), drain_s=round(drain_s, 2))
            levels.append(level)
            print(f"  {name:>13} {clients:>4} clients: {level['tokens_per_s']:8.1f} tok/s, p50 "
                  f"{level['latency_p50_ms']} ms, statuses {level['statuses']}, lost {level['lost']}", flush=True)
    finally:
        handle.stop()
    return {"serve_config": json.loads(cfg[0]), "code": cfg[1] or "this checkout", "stream": stream, "levels": levels}


def compare(results: dict[str, dict], main: str, clients: list[int]) -> tuple[list[dict], dict[str, dict]]:
    """(batched tokens/s over each baseline's per level, the targets). The 8x target is against the previous
    commit's server when it ran (the issue's "today"), else against one-at-a-time."""
    by = {name: {lv["clients"]: lv for lv in r["levels"]} for name, r in results.items()}
    baselines = [n for n in by if n.startswith("previous")] + [n for n in by if n == "one-at-a-time"]
    ratios = []
    if "batched" in by:
        for base in baselines:
            for n in clients:
                one, many = by[base][n]["tokens_per_s"], by["batched"][n]["tokens_per_s"]
                ratios.append({"baseline": base, "clients": n, "baseline_tokens_per_s": one, "batched": many,
                               "ratio": round(many / one, 2) if one else None})
    r64 = next((r for r in ratios if r["clients"] == 64), None)  # the first baseline's
    lv200 = by.get(main, {}).get(200)
    all_levels = [lv for r in results.values() for lv in r["levels"]]
    lost = sum(lv["lost"] for lv in all_levels)
    other = sum(lv["statuses"]["other"] for lv in all_levels)
    targets = {
        "batched_8x_at_64": {"rule": f"batched tokens/s at 64 clients >= 8x {r64['baseline'] if r64 else 'baseline'}",
                             "met": None if r64 is None or r64["ratio"] is None else r64["ratio"] >= 8,
                             "value": None if r64 is None else r64["ratio"]},
        "p99_under_3x_p50_at_200": {
            "rule": f"p99 latency at 200 clients < 3x its p50 ({main})",
            "met": None if not lv200 or not lv200["latency_p50_ms"] else
            lv200["latency_p99_ms"] < 3 * lv200["latency_p50_ms"],
            "value": None if not lv200 or not lv200["latency_p50_ms"] else
            round(lv200["latency_p99_ms"] / lv200["latency_p50_ms"], 2)},
        "no_lost_capture": {"rule": "every acknowledged response captured", "met": lost == 0, "value": lost},
        "only_200_and_429": {"rule": "no status but 200 and 429", "met": other == 0, "value": other},
    }
    return ratios, targets


def markdown(meta: dict, results: dict[str, dict], ratios: list[dict], targets: dict, notes: list[str]) -> str:
    rows = []
    for name, r in results.items():
        star = "" if r["stream"] != "none" else "*"
        for lv in r["levels"]:
            s = lv["statuses"]
            p = {k: "–" if lv[k] is None else lv[k] for k in ("latency_p50_ms", "latency_p99_ms", "ttft_p50_ms",
                                                                "ttft_p99_ms")}  # –: no answer inside the window
            rows.append([name, lv["clients"], lv["tokens_per_s"], lv["requests_per_s"], p["latency_p50_ms"],
                         p["latency_p99_ms"], f"{p['ttft_p50_ms']}{star}", f"{p['ttft_p99_ms']}{star}", s["200"],
                         s["429"], s["other"], lv["acknowledged"], lv["captured"], lv["lost"]])
    table = markdown_table(["engine", "clients", "tokens/s", "requests/s", "p50 ms", "p99 ms", "TTFT p50 ms",
                            "TTFT p99 ms", "200", "429", "other", "acknowledged", "captured", "lost"], rows)
    lines = [f"# Serving under load{' (quick run)' if meta['quick'] else ''}", "",
             f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}), torch {meta['torch']} "
             f"({meta['torch_threads']} threads), load average at start / end {meta['load_start']} / "
             f"{meta['load_end']}", "",
             f"Model: {meta['model']['description']}. Closed loops of `openai.AsyncOpenAI` clients, max_tokens "
             f"{meta['max_tokens']}, temperature {meta['temperature']}, {meta['prompts']} prompts; per level a warm-up "
             f"of at least {meta['warmup_s']} s (until every client had an answer), a {meta['duration_s']} s window "
             f"(rates: each answer's tokens spread over its generation, the part inside the window; percentiles: "
             f"the answers received in it), a drain; statuses and capture over the whole level.", "", table, ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    if ratios:
        lines += ["Tokens/s, batched against each baseline:", "",
                  markdown_table(["baseline", "clients", "baseline tokens/s", "batched tokens/s", "batched / baseline"],
                                 [[r["baseline"], r["clients"], r["baseline_tokens_per_s"], r["batched"], r["ratio"]]
                                  for r in ratios])]
    lines += ["", "Targets:", ""]
    verdict = {None: "not measured", True: "met", False: "MISSED"}
    lines += [f"- {t['rule']}: **{verdict[t['met']]}** ({t['value']})" for t in targets.values()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64, 200],
                        help="concurrency levels, comma-separated (default 1,8,64,200)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="unmeasured seconds before each window (at least; until every client had an answer)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--prompts", type=int, default=64, help="size of the fixed prompt list")
    parser.add_argument("--max-queue", type=int, default=256, help="serve.max_queue of every configuration")
    parser.add_argument("--configs", type=lambda s: s.split(","), default=["one-at-a-time", "batched"],
                        help="engine configurations to run, comma-separated (default both)")
    parser.add_argument("--store", nargs="?", const="", metavar="URI",
                        help="serve a registered model from this store (alone: LLMOPS_STORE_URI or ./llmops-store); "
                             "default: a random mini model")
    parser.add_argument("--model", help="model name in --store (default: PipelineConfig's, llmops-lm)")
    parser.add_argument("--alias", default=ALIAS, help="alias or version number of --model to serve")
    parser.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 8 clients, 1 s warm-up, 3 s windows")
    parser.add_argument("--stream-every", type=int, default=8, metavar="K",
                        help="client i streams when i %% K == 0 (TTFT is measured on those); the others do not, as "
                             "parsing one SSE chunk per token costs the clients' CPU on a small machine (default 8)")
    parser.add_argument("--baseline-ref", metavar="GIT_REF",
                        help="also run the server of this commit (e.g. the one before the batching engine) as a "
                             "third configuration, 'previous (REF)': the 8x target is then measured against it")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving", help="results path without suffix")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.warmup, args.duration = [1, 8], 1.0, 3.0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import openai
    import torch

    from llmops.infra.config import PipelineConfig
    from llmops.infra.settings import get_settings
    from llmops.infra.store import LocalStore

    load_start, t_start = load_average(), time.perf_counter()
    unknown = set(args.configs) - {"one-at-a-time", "batched"}
    if min(args.clients) < 1:
        parser.error("--clients: every level needs at least one client")
    if unknown:
        parser.error(f"--configs: unknown {', '.join(sorted(unknown))}; choose from one-at-a-time, batched")
    configs = engine_configs(args)
    notes: list[str] = []
    main_config = "batched" if "batched" in configs else next(iter(configs))
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        store, cache = LocalStore(Path(tmp) / "store"), Path(tmp) / "cache"
        cache.mkdir()
        name = args.model or PipelineConfig().model_name
        if args.store is None:
            model = build_model(store, name, cache, args.seed)
        else:
            model = copy_model(args.store or get_settings().store_uri, name, args.alias, store)
        prompts = load_prompts(args.prompts)
        print(f"model: {model['description']}; {len(prompts)} prompts; torch threads {torch.get_num_threads()}",
              flush=True)
        results = {n: run_config(n, cfg, store, name, cache, prompts, args) for n, cfg in configs.items()}
    if any(r["stream"] == "none" for r in results.values()):
        notes.append("\\* the server answered 400 to stream=True: non-streamed requests, TTFT = latency")
    if any(lv["usage_missing"] for r in results.values() for lv in r["levels"]):
        notes.append("some responses carried no usage: their tokens were counted as text chunks (streamed) or 0")
    ratios, targets = compare(results, main_config, args.clients)
    meta = run_meta(torch=torch.__version__, openai=openai.__version__, torch_threads=torch.get_num_threads(),
                    load_start=load_start, load_end=load_average(), quick=args.quick, model=model,
                    clients=args.clients, warmup_s=args.warmup, duration_s=args.duration, max_tokens=args.max_tokens,
                    temperature=args.temperature, prompts=len(prompts), prompt_examples=prompts[:3],
                    max_queue=args.max_queue, total_s=round(time.perf_counter() - t_start, 1),
                    max_rss_mb=round(max_rss_mb()))
    md = markdown(meta, results, ratios, targets, notes)
    write_results(args.out.name, {"meta": meta, "configs": results, "ratios": ratios, "targets": targets,
                                  "notes": notes}, md, args.out.parent)
    print()
    print(md)
    print(f"total {meta['total_s']:.0f} s; wrote {args.out}.json and .md", flush=True)


if __name__ == "__main__":
    main()
