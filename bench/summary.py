"""Print the one table of headline ratios that ``make bench`` ends with.

    .venv/bin/python bench/summary.py [results.jsonl]

Reads what the benchmarks recorded through ``bench.results.record`` (the file named by
``LLMJOBS_BENCH_RESULTS``, or the argument) and prints one Markdown table: each row a
number, its reference in the same run, the ratio, the goal and whether it is met.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import ENV, Result, load


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def table(rows: list[Result]) -> str:
    out = [
        "| bench | metric | value | reference | ratio | goal | met |",
        "|---|---|---:|---|---:|---|:-:|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        out.append(
            f"| {r.bench} | {r.metric} | {fmt(r.value)} {r.unit} | {r.reference} | {fmt(r.ratio)} | {r.goal} | {met} |"
        )
    return "\n".join(out)


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(ENV, "")
    rows = load(path) if path else []
    if not rows:
        print(f"no benchmark results recorded (set {ENV} or pass the file)", file=sys.stderr)
        return 1
    print("\n## Summary: headline ratios of this run\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
