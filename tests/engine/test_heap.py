"""The engine freezes the start-up heap once per process (issue 17: GC pauses on the loop)."""

from __future__ import annotations

import json
import subprocess
import sys

# A fresh interpreter: the freeze and the threshold are process-wide (the test process keeps its own).
CHILD = r"""
import asyncio, gc, json, sys
from llmjobs.engine import Call, Engine, heap

freezes = []
real_freeze = gc.freeze
gc.freeze = lambda: (freezes.append(gc.get_count()), real_freeze())[1]
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(), "settled": heap.settled()}

def calls(n):
    return [Call(i, {"model": "claude-haiku-4-5", "max_tokens": 8,
                     "messages": [{"role": "user", "content": f"hi {i}"}]}) for i in range(n)]

async def main():
    for _ in range(3):  # three runs, one engine each
        async with Engine(base_url=sys.argv[1]) as engine:
            outcomes = await engine.run_ordered(calls(5))
        assert all(o.status == "succeeded" for o in outcomes), outcomes

asyncio.run(main())
print(json.dumps({"before": before, "freezes": len(freezes), "threshold": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "settled": heap.settled(), "again": heap.settle_heap()}))
"""


def run_child(sim) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, sim.base_url], check=True, capture_output=True, text=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_run_freezes_the_heap_once_and_sets_the_thresholds(sim):
    from llmjobs.engine.heap import THRESHOLDS

    r = run_child(sim)
    assert r["before"]["settled"] is False
    assert r["freezes"] == 1  # three runs, one freeze
    assert r["frozen"] - r["before"]["frozen"] > 10_000  # the SDK's start-up heap is in the permanent generation
    assert r["before"]["threshold"] == [700, 10, 10]  # CPython's default
    assert r["threshold"] == list(THRESHOLDS)
    assert r["settled"] is True and r["again"] is False


def test_an_application_that_tuned_the_collector_keeps_its_tuning():
    code = (
        "import gc, json; gc.set_threshold(2000, 5, 5); from llmjobs.engine import heap; "
        "print(json.dumps([heap.settle_heap(), gc.get_threshold()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, [2000, 5, 5]]
