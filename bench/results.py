"""One place where every benchmark records its headline ratios, so that ``make bench``
ends with a single table (``bench/summary.py``).

A benchmark calls ``record(...)`` for each headline number; rows are appended as JSON
lines to the file named by ``LLMJOBS_BENCH_RESULTS`` (``make bench`` sets it and clears
it first; unset: nothing is written, so running one script alone is unchanged).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

__all__ = ["Result", "load", "record"]

ENV = "LLMJOBS_BENCH_RESULTS"


@dataclass(frozen=True, slots=True)
class Result:
    bench: str  # the script, e.g. "perf"
    metric: str  # what was measured, e.g. "lat600 wall, engine"
    value: float
    unit: str  # "s", "ms", "MB", "%", "items/s" ...
    reference: str = ""  # what the ratio is against, e.g. "bound 2.24 s"
    ratio: float | None = None  # value / reference, when there is one
    goal: str = ""  # e.g. "<= 1.15"
    met: bool | None = None  # whether the goal is met (None: no goal)


def record(
    bench: str,
    metric: str,
    value: float,
    unit: str,
    *,
    reference: str = "",
    ratio: float | None = None,
    goal: str = "",
    met: bool | None = None,
) -> None:
    """Append one headline result (no-op unless ``LLMJOBS_BENCH_RESULTS`` is set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    row = Result(bench, metric, float(value), unit, reference, ratio, goal, met)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(row)) + "\n")


def load(path: str) -> list[Result]:
    rows: list[Result] = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(Result(**json.loads(line)))
    return rows
