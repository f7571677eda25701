"""Run every bench/bench_*.py in sequence at its default sizes (what `make bench` does); each writes its own results.

    python bench/run_all.py                       # all of them
    python bench/run_all.py tokenization training # only these (names without the bench_ prefix)

Each script runs in its own process (its timings and peak memory are its own) from the
repository root. A failing script is reported and the others still run; the exit status is
non-zero if any failed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts(names: list[str]) -> list[Path]:
    found = sorted(BENCH.glob("bench_*.py"))
    if not names:
        return found
    wanted = {f"bench_{n.removeprefix('bench_').removesuffix('.py')}.py" for n in names}
    unknown = wanted - {p.name for p in found}
    if unknown:
        raise SystemExit(f"no such benchmark: {', '.join(sorted(unknown))}; have {', '.join(p.stem for p in found)}")
    return [p for p in found if p.name in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    todo = scripts(parser.parse_args().names)
    outcomes = []
    for script in todo:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent, check=False).returncode
        outcomes.append((script.name, rc, time.perf_counter() - t0))
    print("\n=== summary ===")
    for name, rc, seconds in outcomes:
        print(f"{name:28s} {'ok' if rc == 0 else f'FAILED (exit {rc})':16s} {seconds:7.1f} s")
    sys.exit(1 if any(rc for _, rc, _ in outcomes) else 0)


if __name__ == "__main__":
    main()
