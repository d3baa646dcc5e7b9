"""Benchmark (issue 9): the engine under real account limits, beside plain ``Semaphore(k)`` gathers.

    .venv/bin/python bench/limits.py [--profiles tier4,output,input] [--quick]

Profiles (each against a fresh simulator subprocess, so its CPU is not counted):

* ``tier4``: 6,000 short items (~40 input tokens, 20-120 output tokens, calls of
  ~0.5 s) at tier 4's 4,000 RPM / 2,000,000 ITPM / 400,000 OTPM, 60 s buckets
  (``--tier 4``). RPM bound: (6,000 - 4,000 burst) / 66.7 per s + one call.
* ``output``: 300 items with ``max_tokens`` 1,024 and short answers at 30,000 OTPM,
  5 s bucket: the engine runs once per ``--remaining-at`` convention (admission,
  answer, refund); the plain runs do not read the headers, so they run once.
* ``input``: 300 long documents (~2,000 input tokens) at 1,200,000 ITPM, 5 s bucket.

"Plain" is the SDK pattern: one ``AsyncAnthropic`` (the SDK's own retries, 2 by
default, which honour ``retry-after``), ``asyncio.Semaphore(k)``, ``gather``; an
item fails when the SDK gives up. The engine runs with its defaults. Columns:
wall seconds, 429s and requests counted by the simulator, failed items, the most
requests in flight at the simulator, and the ratio of the wall time to the fastest
plain run that lost nothing (and, on tier 4, to the RPM bound). A benchmark
reports numbers; it asserts nothing. The machine is shared: walls are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anthropic

from llmjobs.engine import Call, Engine, make_client
from llmjobs.engine.advice import max_tokens_advice
from llmjobs.simulator.server import SimulatorProcess

MODEL = "claude-sonnet-5-5"
LAT = ["--ttft", "0.45", "--tps", "1000"]  # ~0.5 s a call (ttft jittered +/-50%)
WORDS = [
    "the",
    "report",
    "shows",
    "revenue",
    "grew",
    "while",
    "costs",
    "fell",
    "across",
    "most",
    "regions",
    "and",
    "the",
    "team",
    "expects",
    "further",
    "gains",
    "next",
    "quarter",
    "despite",
    "supply",
    "issues",
    "customers",
    "praised",
    "support",
    "but",
    "asked",
    "for",
    "faster",
    "delivery",
]


def short_items(n: int, max_tokens: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 30)))
        out.append(
            {
                "model": MODEL,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Note #{i} on: {text}"}],
            }
        )
    return out


def long_items(n: int, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1300, 1700)))
        out.append(
            {
                "model": MODEL,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": f"Note #{i} on this document:\n\n{text}"}],
            }
        )
    return out


PROFILES = {
    "tier4": {
        "title": "tier 4: 6,000 items, 4,000 RPM / 2M ITPM / 400k OTPM, 60 s buckets",
        "cli": ["--tier", "4", *LAT],
        "items": lambda quick: short_items(1500 if quick else 6000, 128),
        "plain": (100, 200, 400),
        "conventions": ("refund",),
        "rpm": 4000,
    },
    "output": {
        "title": "output-bound: 300 items, max_tokens 1,024, 30k OTPM, 5 s bucket",
        "cli": ["--otpm", "30000", "--burst", "5", *LAT],
        "items": lambda quick: short_items(120 if quick else 300, 1024),
        "plain": (3, 5, 10),
        "conventions": ("admission", "answer", "refund"),
    },
    "input": {
        "title": "input-bound: 300 long documents (~2,000 tokens), 1.2M ITPM, 5 s bucket",
        "cli": ["--itpm", "1200000", "--burst", "5", *LAT],
        "items": lambda quick: long_items(120 if quick else 300),
        "plain": (5, 10, 20),
        "conventions": ("refund",),
    },
}


async def run_plain(base_url: str, items: list[dict], k: int) -> int:
    client = make_client(base_url=base_url, max_retries=2)
    sem = asyncio.Semaphore(k)

    async def one(p: dict) -> bool:
        async with sem:
            try:
                await client.messages.create(**p)
                return True
            except anthropic.APIError:
                return False

    try:
        oks = await asyncio.gather(*(one(p) for p in items))
    finally:
        await client.close()
    return sum(1 for ok in oks if not ok)


async def run_engine(base_url: str, items: list[dict], info: dict) -> int:
    async with Engine(base_url=base_url) as engine:
        outcomes = await engine.run_ordered([Call(i, p) for i, p in enumerate(items)])
        gov = engine.governor
        info["gov"] = gov
        info["advice"] = max_tokens_advice(
            gov.observed_outputs(),
            max(p["max_tokens"] for p in items),
            gov.binding,
            capacity=gov.output_tokens.capacity,
            rate=gov.output_tokens.rate,
            latency=engine._latency.mean,
        )
    return sum(1 for o in outcomes if o.status != "succeeded")


def measure(sim: SimulatorProcess, kind: str, items: list[dict], k: int = 0) -> dict:
    sim.reset()
    info: dict = {}
    t0 = time.perf_counter()
    if kind == "engine":
        failed = asyncio.run(run_engine(sim.base_url, items, info))
    else:
        failed = asyncio.run(run_plain(sim.base_url, items, k))
    wall = time.perf_counter() - t0
    s = sim.stats()
    return {
        "wall": wall,
        "failed": failed,
        "429": s["by_status"].get("429", 0),
        "requests": s["requests"],
        "peak": s.get("peak_in_flight", 0),
        **info,
    }


def run_profile(key: str, quick: bool) -> None:
    p = PROFILES[key]
    items = p["items"](quick)
    n = len(items)
    rows: list[tuple[str, dict]] = []
    notes: list[str] = []
    for conv in p["conventions"]:
        with SimulatorProcess(*p["cli"], "--remaining-at", conv) as sim:
            r = measure(sim, "engine", items)
            rows.append((f"engine (remaining at {conv})", r))
            gov = r["gov"]
            b = gov.output_tokens if key == "output" else (gov.input_tokens if key == "input" else gov.requests)
            notes.append(
                f"engine, remaining at {conv}: binding {gov.binding}, model chose {b.convention_name!r}, "
                f"capacity {b.capacity:.0f}, p90 output {gov.predicted_output}, input factor {gov.input_factor:.2f}, "
                f"advice: {r['advice']}"
            )
            print(f"  [{key}] engine/{conv}: {r['wall']:.1f}s", file=sys.stderr, flush=True)
            if conv == p["conventions"][-1]:
                for k in p["plain"]:
                    r = measure(sim, "plain", items, k)
                    rows.append((f"plain Semaphore({k})", r))
                    print(f"  [{key}] Semaphore({k}): {r['wall']:.1f}s", file=sys.stderr, flush=True)
    plain = [r for name, r in rows if name.startswith("plain")]
    lossless = [r["wall"] for r in plain if r["failed"] == 0]
    best = min(lossless) if lossless else min(r["wall"] for r in plain)
    rpm_bound = None
    if p.get("rpm"):
        rate = p["rpm"] / 60
        rpm_bound = max(0.0, (n - p["rpm"]) / rate) + 0.5
    print(f"\n### {p['title']}  (N={n}; simulator: {' '.join(p['cli'])})")
    what = "fastest lossless plain" if lossless else "fastest plain (every plain run lost items)"
    print(f"reference: {what} = {best:.1f} s" + (f"; RPM bound = {rpm_bound:.1f} s" if rpm_bound else ""))
    hdr = f"| {'approach':<34} | {'items':>5} | {'wall s':>7} | {'429s':>5} | {'requests':>8} | {'failed':>6} | {'most in flight':>14} | {'x best plain':>12} |"
    if rpm_bound:
        hdr += f" {'x RPM bound':>11} |"
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    for name, r in rows:
        line = (
            f"| {name:<34} | {n:>5} | {r['wall']:>7.1f} | {r['429']:>5} | {r['requests']:>8} | {r['failed']:>6} | "
            f"{r['peak']:>14} | {r['wall'] / best:>12.2f} |"
        )
        if rpm_bound:
            line += f" {r['wall'] / rpm_bound:>11.2f} |"
        print(line)
    for note in notes:
        print("  " + note)
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="tier4,output,input")
    ap.add_argument("--quick", action="store_true", help="fewer items: a smoke run")
    args = ap.parse_args()
    t0 = time.perf_counter()
    for key in args.profiles.split(","):
        run_profile(key.strip(), args.quick)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
