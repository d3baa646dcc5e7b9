"""Benchmark (issue 17): the concurrency controller's ramp on a fake clock, free of machine noise.

    .venv/bin/python bench/ramp.py [--seeds 8]

The real governor (``llmjobs.engine.Governor``) drives a discrete-event model of
bench/perf.py's latency profiles: a server that answers 529 beyond ``capacity``
calls in flight (``--capacity 200`` / ``50``), calls of ttft 0.45 s jittered
+/-50% plus 20-120 output tokens at 1,000 tokens/s, 600 items, and one client
loop that spends ``1 ms`` of CPU to send a call, ``1 ms`` per answer and
``0.7 ms`` per 529 (about the SDK's cost on this machine), and sends at most 8
calls per loop turn before it reads the answers already there (the engine's
``_LAUNCH_BURST``). A 529'd call is sent again as soon as the governor allows,
before fresh items, as the engine does. A 529 is seen 60 ms after its call was
launched: the real engine saw its first 529s 0.12 to 0.22 s after launching
them on a loaded machine (the loop is busy launching the wave), and with 60 ms
the model meets about as many 529s as bench/perf.py's lat600 (50 to 60). The
first wave's first call is streamed: its headers come back 3 ms after it is
sent (no rate-limit headers here) and end the warm-up (``Governor.on_open``).
The wall time is the model's clock, so a comparison between warm-up strategies
is exact and repeatable; the CPU figures are assumptions, the absolute ratios
are therefore optimistic (bench/perf.py measures the real thing). Bound:
sum(latency) / capacity + one mean call, as bench/perf.py.

Rows: the default (a first wave of ``governor.FIRST_WAVE`` calls until its first
headers), the same wave until the first answer (as before the first wave was
streamed), the warm-up of one call until the first answer (before issue 17's
second pass), no warm-up at all (``warmup=0``: the initial ceiling of 32 at once;
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
OVERLOAD_RTT = 0.06  # launch to 529 seen (calibrated: see the docstring)
OPEN_RTT, OPEN_CPU = 0.003, 0.0003  # a streamed call's headers come back as soon as it is admitted
LAUNCH_BURST = 8  # the engine's calls sent per loop turn (engine/run.py _LAUNCH_BURST)
TTFT, TPS = 0.45, 1000.0


def run(*, capacity: int, seed: int, n: int = 600, headers: bool = True, **gov: Any) -> tuple[float, float, int]:
    """One run: (wall seconds, bound seconds, 529s). ``headers``: the first wave's first call's
    response headers come back ``OPEN_RTT`` after it is sent (it is streamed) and may end the
    warm-up."""
    rng = random.Random(seed)
    clock = [0.0]
    g = Governor(clock=lambda: clock[0], learn=False, rng=random.Random(2), **gov)
    now = 0.0
    todo, retry, done, overloaded, latency_sum = n, 0, 0, 0, 0.0
    server: list[float] = []  # when each admitted call ends
    events: list[tuple[float, int, Any, bool | None]] = []  # ok: True, 529: False, headers: None
    seq = 0
    while done < n:
        while events and events[0][0] <= now:  # the answers already here, each for its CPU
            _, _, ticket, ok = heapq.heappop(events)
            if ok is None:  # a first-wave call's headers (no limit headers here)
                now += OPEN_CPU
                clock[0] = now
                g.on_open(ticket, {})
                continue
            now += ANSWER_CPU if ok else OVERLOAD_CPU
            clock[0] = now
            if ok:
                g.on_success(ticket)
                done += 1
            else:
                g.on_overloaded(ticket)
                overloaded += 1
                retry += 1  # sent again as soon as the governor allows, before fresh items
        if done == n:
            break
        burst = 0
        while (todo or retry) and burst < LAUNCH_BURST:  # then what the governor allows now
            clock[0] = now
            if g.free_slots() <= 0 or g.delay(40, 128) > 0:
                break
            now += SEND_CPU
            clock[0] = now
            ticket = g.acquire(40, 128)
            burst += 1
            if retry:
                retry -= 1
            else:
                todo -= 1
            while server and server[0] <= now:
                heapq.heappop(server)
            seq += 1
            if len(server) >= capacity:
                heapq.heappush(events, (now + OVERLOAD_RTT, seq, ticket, False))
            else:
                latency = TTFT * (0.5 + rng.random()) + rng.randint(20, 120) / TPS
                latency_sum += latency
                heapq.heappush(server, now + latency)
                heapq.heappush(events, (now + latency, seq, ticket, True))
                if headers and ticket.wave:
                    heapq.heappush(events, (now + OPEN_RTT, seq, ticket, None))
        if burst:
            continue  # the engine yields to the loop after each burst: answers due come first
        # idle: until the next answer, or the end of a pause (or of the warm-up) if sooner
        wake = events[0][0] if events else float("inf")
        if todo or retry:
            clock[0] = now
            if g.free_slots() > 0:
                wake = min(wake, now + max(g.delay(40, 128), 1e-4))
            elif g.warming:
                wake = min(wake, now + max(g.warmup_left(), 1e-4))
        now = max(now, wake)
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
    return f"| {name:<46} | {capacity:>8} | {wall:>6.2f} | {bound:>7.2f} | {ratio:>7.3f} | {overloaded:>6.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8, help="runs per row (jitter seeds); the table shows means")
    args = ap.parse_args()
    print(f"| {'approach':<46} | capacity | wall s | bound s | x bound |   529s |")
    print(f"|{'-' * 48}|----------|--------|---------|---------|--------|")
    for capacity in (200, 50):
        s = args.seeds
        wave = int(governor_module.FIRST_WAVE[0])
        print(row(f"engine, first wave {wave} (default)", capacity, s, warmup=1.0))
        print(row(f"engine, first wave {wave} until an answer (before)", capacity, s, warmup=1.0, headers=False))
        print(
            row(
                "engine, warm-up of one call (before)",
                capacity,
                s,
                first_wave=(1, 1e12, 1e12),
                warmup=1.0,
                headers=False,
            )
        )
        print(row("engine, warmup=0 (32 at once)", capacity, s, warmup=0.0))
        sem = {"warmup": 0.0, "initial_concurrency": capacity, "max_concurrency": capacity}
        print(row(f"Semaphore({capacity}) (capacity known)", capacity, s, **sem))


if __name__ == "__main__":
    main()
