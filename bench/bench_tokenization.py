"""Benchmark: tokenization throughput of our packing path (llmops.models.data.packing.pack_split) vs raw
`tokenizers` encode_batch.

One process, one corpus, one trained byte-level BPE; every path tokenizes the same documents:

- raw            ``tokenizer.backend_tokenizer.encode_batch`` over batches of documents (the baseline)
- hf_call        the transformers wrapper ``tokenizer(texts)`` our packing calls (diagnostic)
- blocks_loop    our ``_blocks`` (tokenize + eos + pack) in a plain loop, no ``datasets`` (diagnostic)
- pack_split np=1, np=2   our packing path: ``datasets.map(batched=True, num_proc=...)``, as the pipeline runs it

The corpus is the stdlib docstrings plus Tiny Shakespeare when present, repeated to ``--mb``.
The BPE (8192 tokens, ``train_bpe``) is trained on one copy of it: repetition does not change
the merges, only the training time. Token counts of every path are checked against the raw ones.

    python bench/bench_tokenization.py             # 30 MB, every path twice (about 6 minutes on 2 cores)
    python bench/bench_tokenization.py --mb 2      # a quick run

Writes bench/results/tokenization.json and tokenization.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

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

MAP_BATCH = 1000  # pack_split's datasets.map batch_size; the raw baseline uses the same batches


def raw_encode(tokenizer, texts: list[str], batch: int) -> list[int]:
    """Tokens per document through the Rust tokenizer directly (no special tokens, no eos)."""
    backend, lengths = tokenizer.backend_tokenizer, []
    for i in range(0, len(texts), batch):
        lengths += [len(e.ids) for e in backend.encode_batch(texts[i:i + batch], add_special_tokens=False)]
    return lengths


def hf_call(tokenizer, texts: list[str], batch: int) -> list[int]:
    """Tokens per document through PreTrainedTokenizerFast.__call__, the call pack_split's map body makes."""
    lengths = []
    for i in range(0, len(texts), batch):
        lengths += [len(ids) for ids in tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]]
    return lengths


def blocks_loop(tokenizer, texts: list[str], block_size: int) -> np.ndarray:
    """pack_split's map body over the same batches, without datasets (isolates the datasets overhead)."""
    from llmops.models.data.packing import _blocks

    out = [_blocks({"text": texts[i:i + MAP_BATCH]}, tokenizer, block_size)["input_ids"]
           for i in range(0, len(texts), MAP_BATCH)]
    return np.concatenate(out).astype(np.uint16).reshape(-1, block_size)


def expected_packed_tokens(lengths: list[int], block_size: int, num_proc: int) -> int:
    """Tokens pack_split keeps: per map batch (within each contiguous datasets shard), whole blocks of tokens + eos."""
    n = len(lengths)
    shards = num_proc if num_proc > 1 and n >= 2000 else 1  # pack_split's own rule for using processes
    div, mod = divmod(n, shards)
    kept = 0
    for rank in range(shards):
        start = div * rank + min(rank, mod)
        end = start + div + (rank < mod)
        for b in range(start, end, MAP_BATCH):
            batch_tokens = sum(lengths[b:min(end, b + MAP_BATCH)]) + min(end, b + MAP_BATCH) - b
            kept += batch_tokens // block_size * block_size
    return kept


def first_batch_matches(tokenizer, texts: list[str], packed: np.ndarray, block_size: int) -> bool:
    """The first map batch's blocks equal the raw ids of its documents, each followed by eos."""
    eos = tokenizer.eos_token_id
    encs = tokenizer.backend_tokenizer.encode_batch(texts[:MAP_BATCH], add_special_tokens=False)
    flat = [t for e in encs for t in (*e.ids, eos)]
    n = len(flat) // block_size
    return n <= len(packed) and bool(np.array_equal(np.asarray(flat[:n * block_size]).reshape(n, block_size),
                                                    packed[:n]))


def run_variant(name: str, tokenizer, texts: list[str], block_size: int) -> tuple[object, float]:
    from llmops.models.data.packing import pack_split

    if name == "raw":
        return timed(raw_encode, tokenizer, texts, MAP_BATCH)
    if name == "hf_call":
        return timed(hf_call, tokenizer, texts, MAP_BATCH)
    if name == "blocks_loop":
        return timed(blocks_loop, tokenizer, texts, block_size)
    num_proc = int(name.rsplit("=", 1)[1])
    return timed(pack_split, texts, tokenizer, block_size, num_proc)


VARIANTS = ["raw", "hf_call", "blocks_loop", "pack_split np=1", "pack_split np=2"]
DESCRIPTIONS = {
    "raw": "`backend_tokenizer.encode_batch`, batches of 1000 docs (baseline)",
    "hf_call": "`tokenizer(texts)` (transformers wrapper), batches of 1000",
    "blocks_loop": "our `_blocks` (tokenize + eos + pack) in a plain loop, no datasets",
    "pack_split np=1": "our `pack_split`: `datasets.map(batched=True)`, num_proc=1",
    "pack_split np=2": "our `pack_split`: `datasets.map(batched=True)`, num_proc=2",
}


def measure(tokenizer, texts: list[str], block_size: int, rounds: int, warmup_docs: list[str]) -> tuple[dict, dict]:
    """Seconds per variant and round (variants interleaved, order reversed every other round), and outputs.

    Every path first runs once, untimed, over ``warmup_docs``: the BPE word cache, the thread pool
    and lazy imports are warm before any path is timed, so the first path timed pays no extra.
    """
    for name in VARIANTS:
        run_variant(name, tokenizer, warmup_docs, block_size)
    seconds = {v: [] for v in VARIANTS}
    outputs = {}
    for r in range(rounds):
        for name in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            outputs[name], s = run_variant(name, tokenizer, texts, block_size)
            seconds[name].append(s)
            print(f"  round {r + 1} {name:16s} {s:7.2f} s", flush=True)
    return seconds, outputs


def check_counts(tokenizer, texts, outputs: dict, block_size: int) -> dict:
    """Token counts of every path against the raw baseline; pack_split's exactly as its batching predicts."""
    lengths = outputs["raw"]
    checks = {"raw_tokens": sum(lengths), "hf_call_equal": outputs["hf_call"] == lengths}
    for name in ("blocks_loop", "pack_split np=1", "pack_split np=2"):
        procs = int(name.rsplit("=", 1)[1]) if "=" in name else 1
        want = expected_packed_tokens(lengths, block_size, procs)
        got = int(outputs[name].size)
        checks[name] = {"tokens": got, "expected": want, "equal": got == want,
                        "dropped_remainders": sum(lengths) + len(lengths) - got,
                        "first_batch_content_equal": first_batch_matches(tokenizer, texts, outputs[name], block_size)}
    checks["ok"] = checks["hf_call_equal"] and all(
        checks[n]["equal"] and checks[n]["first_batch_content_equal"] for n in VARIANTS[2:])
    return checks


def summarise(seconds: dict, checks: dict, mb: float) -> list[dict]:
    raw_tokens, rows = checks["raw_tokens"], []
    raw_s = median(seconds["raw"])
    for name in VARIANTS:
        s = median(seconds[name])
        # every path tokenizes all the text; rate counts the raw tokens so the paths compare like for like
        rows.append({"variant": name, "what": DESCRIPTIONS[name], "seconds": s, "seconds_all_rounds": seconds[name],
                     "tokens_per_s": raw_tokens / s, "mb_per_s": mb / s, "vs_raw": raw_s / s})
    return rows


def markdown(rows: list[dict], meta: dict, checks: dict) -> str:
    table = markdown_table(
        ["path", "what", "s (median)", "tokens/s", "MB/s", "vs raw"],
        [[r["variant"], r["what"], f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{r['mb_per_s']:.2f}",
          f"{r['vs_raw']:.2f}x"] for r in rows])
    c = meta["corpus"]
    return "\n".join([
        "# Tokenization throughput: our packing path vs raw `tokenizers`",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['cpus']} CPUs ({meta['processor']}), "
        f"tokenizers {meta['tokenizers']}, transformers {meta['transformers']}, datasets {meta['datasets']}, "
        f"load average at start / end {meta['load_start']} / {meta['load_end']}",
        "",
        f"Corpus: {c['mb']:.1f} MB, {c['docs']:,} documents ({c['copies']} copies of {c['unique_mb']:.2f} MB: "
        f"{', '.join(f'{k} {v:,} docs' for k, v in c['sources_docs'].items())}). Byte-level BPE of "
        f"{meta['vocab_size']:,} tokens (`train_bpe`, {meta['bpe_train_s']:.1f} s on one copy); blocks of "
        f"{meta['block_size']} tokens. tokens/s counts the {checks['raw_tokens']:,} raw tokens for every path; "
        f"median of {meta['rounds']} round(s).",
        "",
        table,
        "",
        f"Token counts: {'all agree' if checks['ok'] else 'MISMATCH'} (wrapper ids = raw ids; packed = raw + one eos "
        f"per document minus the per-batch remainders shorter than a block: "
        + ", ".join(f"{n} keeps {checks[n]['tokens']:,}" for n in VARIANTS[2:]) + ").",
        f"Peak RSS of the process: {meta['peak_rss_mb']:.0f} MB.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=30.0, help="corpus size in MB (repeats the unique text)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every path, interleaved; report the median")
    parser.add_argument("--out", type=Path, default=RESULTS / "tokenization", help="path stem of the .json/.md")
    args = parser.parse_args()

    import datasets
    import tokenizers
    import transformers

    from llmops.models.data.tokenizer import train_bpe

    datasets.disable_progress_bars()
    load_start = load_average()
    texts, corpus = bench_corpus(int(args.mb * 1e6))
    unique, _ = bench_corpus()  # one copy: repeating the text would not change the merges
    tokenizer, bpe_s = timed(train_bpe, unique, args.vocab)
    print(f"corpus {corpus['mb']:.1f} MB, {corpus['docs']:,} docs; BPE of {len(tokenizer)} tokens in {bpe_s:.1f} s",
          flush=True)
    seconds, outputs = measure(tokenizer, texts, args.block_size, args.rounds, unique)
    checks = check_counts(tokenizer, texts, outputs, args.block_size)
    rows = summarise(seconds, checks, corpus["mb"])
    meta = run_meta(tokenizers=tokenizers.__version__, transformers=transformers.__version__,
                    datasets=datasets.__version__, corpus=corpus, vocab_size=len(tokenizer), bpe_train_s=bpe_s,
                    block_size=args.block_size, rounds=args.rounds, peak_rss_mb=max_rss_mb(),
                    load_start=load_start, load_end=load_average())
    text = markdown(rows, meta, checks)
    print(text)
    write_results(args.out.name, {"meta": meta, "results": rows, "checks": checks}, text, args.out.parent)


if __name__ == "__main__":
    main()
