"""Benchmark (issue 17): the concurrency controller's ramp on a fake clock, free of machine noise.

    .venv/bin/python bench/ramp.py [--seeds 8]

The real governor (``llmjobs.engine.Governor``) drives a discrete-event model of
bench/perf.py's latency profiles: a server that answers 529 at once beyond
``capacity`` calls in flight (``--capacity 200`` / ``50``), calls of ttft 0.45 s
jittered +/-50% plus 20-120 output tokens at 1,000 tokens/s, 600 items, and one
client loop that spends ``1 ms`` of CPU to send a call, ``1 ms`` per answer and
``0.7 ms`` per 529 (about the SDK's cost on this machine). A 529'd call is sent
again at once, as the engine does. The wall time is the model's clock, so a
comparison between warm-up strategies is exact and repeatable; the CPU figures are
assumptions, the absolute ratios are therefore optimistic (bench/perf.py measures
the real thing). Bound: sum(latency) / capacity + one mean call, as bench/perf.py.

Rows: the default (a first wave of ``governor.FIRST_WAVE`` calls until the first
answer), the warm-up as it was before issue 17's second pass (one call until the
first answer), no warm-up at all (``warmup=0``: the initial ceiling of 32 at once;
no protection for a limited account), and a ``Semaphore(capacity)`` (the
capacity known in advance).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmjobs.engine import governor as governor_module
from llmjobs.engine.governor import Governor

SEND_CPU, ANSWER_CPU, OVERLOAD_CPU = 0.001, 0.001, 0.0007
TTFT, TPS = 0.45, 1000.0


def run(*, capacity: int, seed: int, n: int = 600, **gov: Any) -> tuple[float, float, int]:
    """One run: (wall seconds, bound seconds, 529s)."""
    rng = random.Random(seed)
    clock = [0.0]
    g = Governor(clock=lambda: clock[0], learn=False, rng=random.Random(2), **gov)
    now = 0.0
    todo, retry, done, overloaded, latency_sum = n, 0, 0, 0, 0.0
    server: list[float] = []  # when each admitted call ends
    events: list[tuple[float, int, Any, bool]] = []
    seq = 0
    while done < n:
        while todo or retry:  # send what the governor allows now
            clock[0] = now
            if g.free_slots() <= 0 or g.delay(40, 128) > 0:
                break
            now += SEND_CPU
            clock[0] = now
            ticket = g.acquire(40, 128)
            if retry:
                retry -= 1
            else:
                todo -= 1
            while server and server[0] <= now:
                heapq.heappop(server)
            seq += 1
            if len(server) >= capacity:
                heapq.heappush(events, (now + 0.003, seq, ticket, False))
            else:
                latency = TTFT * (0.5 + rng.random()) + rng.randint(20, 120) / TPS
                latency_sum += latency
                heapq.heappush(server, now + latency)
                heapq.heappush(events, (now + latency, seq, ticket, True))
        if not events:  # a run-wide pause with nothing in flight
            now += max(g.delay(40, 128), 0.001)
            continue
        at, _, ticket, ok = heapq.heappop(events)
        now = max(now, at) + (ANSWER_CPU if ok else OVERLOAD_CPU)
        clock[0] = now
        if ok:
            g.on_success(ticket)
            done += 1
        else:
            g.on_overloaded(ticket)
            overloaded += 1
            retry += 1
    call = latency_sum / n
    return now, n * call / capacity + call, overloaded


def row(name: str, capacity: int, seeds: int, first_wave: tuple[float, float, float] | None = None, **gov: Any) -> str:
    saved = governor_module.FIRST_WAVE
    if first_wave is not None:
        governor_module.FIRST_WAVE = first_wave
    try:
        runs = [run(capacity=capacity, seed=s, **gov) for s in range(seeds)]
    finally:
        governor_module.FIRST_WAVE = saved
    ratio = statistics.mean(w / b for w, b, _ in runs)
    wall = statistics.mean(w for w, _, _ in runs)
    bound = statistics.mean(b for _, b, _ in runs)
    overloaded = statistics.mean(o for _, _, o in runs)
    return f"| {name:<36} | {capacity:>8} | {wall:>6.2f} | {bound:>7.2f} | {ratio:>7.3f} | {overloaded:>6.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8, help="runs per row (jitter seeds); the table shows means")
    args = ap.parse_args()
    print(f"| {'approach':<36} | capacity | wall s | bound s | x bound |   529s |")
    print(f"|{'-' * 38}|----------|--------|---------|---------|--------|")
    for capacity in (200, 50):
        s = args.seeds
        print(row(f"engine, first wave {int(governor_module.FIRST_WAVE[0])} (default)", capacity, s, warmup=1.0))
        print(row("engine, warm-up of one call (before)", capacity, s, first_wave=(1, 1e12, 1e12), warmup=1.0))
        print(row("engine, warmup=0 (32 at once)", capacity, s, warmup=0.0))
        sem = {"warmup": 0.0, "initial_concurrency": capacity, "max_concurrency": capacity}
        print(row(f"Semaphore({capacity}) (capacity known)", capacity, s, **sem))


if __name__ == "__main__":
    main()
