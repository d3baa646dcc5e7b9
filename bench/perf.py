"""Benchmark (issue 17): the engine against the bound and plain ``Semaphore(k)`` gathers.

    .venv/bin/python bench/perf.py [--profiles lat600,lat6000,rpm,tier4] [--quick]

Profiles (each against a fresh simulator subprocess, so its CPU is not counted;
calls of ~0.5 s: ``--ttft 0.45 --tps 1000``, 20-120 output tokens):

* ``lat600`` / ``lat6000``: latency-bound, ``--capacity 200`` (529 beyond 200 in
  flight), no rate limit, 600 / 6,000 items. Bound: sum(latency) / 200 + one call.
  ``lat600`` also times ``submit_job --run`` and start-up per job (bench/perf_django.py).
* ``lat50``: the same at ``--capacity 50``: the wall is reached even where the
  client's CPU cannot keep 200 calls in flight (a loaded machine).
* ``rpm``: RPM-bound, ``--rpm 600 --burst 5`` (50 at once, then 10 a second),
  200 items. Bound: (N - 50) / 10 per s + one call.
* ``tier4``: tier 4 (4,000 RPM, 60 s buckets), 6,000 items: CPU per item.

"Plain" is the SDK pattern: one ``AsyncAnthropic`` (its own 2 retries), a
``Semaphore(k)``, ``gather``. The engine runs with its defaults (``Engine()``,
warm-up included: a first wave of 12 calls until the first one's headers, streamed, tell the limits);
on the latency profiles also with ``warmup=0`` (the initial ceiling, 32, at once), to show
what the warm-up costs when there are no limits to learn. Slow plain runs go over a
prefix and are extrapolated (``*``).
Columns: wall seconds, x bound, x plain Semaphore(k), 429s, 529s, failed items,
CPU ms per item (process CPU, client side) and its ratio to the plain
Semaphore(200) (tier4: Semaphore(400)) run. Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import perf_django
from bench.limits import run_plain, short_items
from bench.results import record
from llmjobs.engine import Call, Engine, EngineConfig
from llmjobs.simulator.server import SimulatorProcess

LAT = ["--ttft", "0.45", "--tps", "1000"]
PROFILES: dict[str, dict] = {
    "lat600": {
        "title": "latency-bound: --capacity 200, no rate limit, 600 items",
        "cli": ["--capacity", "200", *LAT],
        "n": 600,
        "plain": {10: 200, 50: None, 200: None},
        "capacity": 200,
        "cpu_ref": 200,
        "django": True,  # also submit_job --run, and start-up per job
    },
    "lat50": {  # the controller's wall where the client's CPU is not the limit (few in flight)
        "title": "latency-bound: --capacity 50, no rate limit, 600 items",
        "cli": ["--capacity", "50", *LAT],
        "n": 600,
        "plain": {10: 200, 50: None, 200: None},
        "capacity": 50,
        "cpu_ref": 50,
    },
    "lat6000": {
        "title": "latency-bound: --capacity 200, no rate limit, 6,000 items",
        "cli": ["--capacity", "200", *LAT],
        "n": 6000,
        "plain": {10: 300, 50: 1500, 200: None},
        "capacity": 200,
        "cpu_ref": 200,
    },
    "rpm": {
        "title": "RPM-bound: --rpm 600 --burst 5, 200 items",
        "cli": ["--rpm", "600", "--burst", "5", *LAT],
        "n": 200,
        "plain": {10: None, 50: None, 200: None},
        "rpm": (600, 5),
        "cpu_ref": 200,
    },
    "tier4": {
        "title": "tier 4: 4,000 RPM / 2M ITPM / 400k OTPM, 60 s buckets, 6,000 items",
        "cli": ["--tier", "4", *LAT],
        "n": 6000,
        "plain": {400: None},
        "rpm": (4000, 60),
        "cpu_ref": 400,
    },
}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_engine(base_url: str, items: list[dict], warmup: bool = True) -> int:
    config = EngineConfig() if warmup else EngineConfig(warmup=0.0)
    async with Engine(base_url=base_url, config=config) as engine:
        outcomes = await engine.run_ordered([Call(i, p) for i, p in enumerate(items)])
    return sum(1 for o in outcomes if o.status != "succeeded")


def measure(sim: SimulatorProcess, kind: str, items: list[dict], k: int = 0) -> dict:
    sim.reset()
    c0, t0 = cpu(), time.perf_counter()
    if kind.startswith("engine"):
        failed = asyncio.run(run_engine(sim.base_url, items, warmup=kind == "engine"))
    else:
        failed = asyncio.run(run_plain(sim.base_url, items, k))
    wall, used = time.perf_counter() - t0, cpu() - c0
    s = sim.stats()
    return {
        "wall": wall,
        "cpu_item": used / len(items) * 1000,
        "failed": failed,
        "429": s["by_status"].get("429", 0),
        "529": s["by_status"].get("529", 0),
        "out": s.get("output_tokens", 0),
        "n": len(items),
    }


def bound(p: dict, n: int, out_tokens: float) -> float:
    ttft, tps = 0.45, 1000.0
    call = ttft + out_tokens / n / tps
    if p.get("capacity"):
        return n * call / p["capacity"] + call
    rpm, burst = p["rpm"]
    return max(0.0, n - rpm * burst / 60) / (rpm / 60) + call


def run_profile(key: str, quick: bool) -> None:
    p = PROFILES[key]
    n = p["n"] // 4 if quick else p["n"]
    items = short_items(n, 128)
    rows: list[tuple[str, dict, bool]] = []
    with SimulatorProcess(*p["cli"]) as sim:
        # untimed: the first run in a process pays the SDK's lazy imports (and the simulator's
        # first requests); without this the first row (the engine's) carried them alone
        measure(sim, "engine", items[:50])
        eng = measure(sim, "engine", items)
        rows.append(("engine (defaults)", eng, False))
        print(f"  [{key}] engine: {eng['wall']:.2f}s", file=sys.stderr, flush=True)
        if p.get("capacity"):  # what the warm-up costs (no limits to learn here)
            r = measure(sim, "engine-nowarm", items)
            rows.append(("engine (warmup=0)", r, False))
        if p.get("django"):
            sim.reset()
            r = perf_django.submit_run(sim.base_url, items)
            s = sim.stats()
            r.update(cpu_item=float("nan"), out=s.get("output_tokens", 0))
            r.update({"429": s["by_status"].get("429", 0), "529": s["by_status"].get("529", 0)})
            rows.append(("submit_job --run", r, False))
            print(f"  [{key}] submit_job --run: {r['wall']:.2f}s", file=sys.stderr, flush=True)
            start = perf_django.startup(sim.base_url)
        for k, prefix in p["plain"].items():
            m = min(n, prefix // (4 if quick else 1)) if prefix else n
            r = measure(sim, "plain", items[:m], k)
            if m < n:
                r["wall"] *= n / m
            rows.append((f"plain Semaphore({k})", r, m < n))
            print(f"  [{key}] Semaphore({k}): {r['wall']:.2f}s (n={m})", file=sys.stderr, flush=True)
    b = bound(p, n, eng["out"] or n * 70)
    ref_cpu = next(r["cpu_item"] for name, r, _ in rows if name == f"plain Semaphore({p['cpu_ref']})")
    print(f"\n### ({key}) {p['title']}  (simulator: {' '.join(p['cli'])})")
    print(f"bound = {b:.2f} s")
    hdr = (
        f"| {'approach':<24} | {'n':>5} | {'wall s':>8} | {'x bound':>7} | {'x this':>6} | {'429s':>5} | "
        f"{'529s':>5} | {'failed':>6} | {'CPU ms/item':>11} | {'x plain CPU':>11} |"
    )
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    for name, r, extrap in rows:
        mark = "*" if extrap else " "
        this = eng["wall"] / r["wall"]
        print(
            f"| {name:<24} | {r['n']:>5} | {r['wall']:>7.2f}{mark} | {r['wall'] / b:>7.2f} | {this:>6.2f} | "
            f"{r['429']:>5} | {r['529']:>5} | {r['failed']:>6} | {r['cpu_item']:>11.2f} | "
            f"{r['cpu_item'] / ref_cpu:>11.2f} |"
        )
    print("  x this: the engine's wall / this row's wall (below 1: the engine is faster)")
    if p.get("django"):
        print(
            f"start-up per job (fresh interpreter, median of 3): 1-item submit_job --run {start['job']:.2f} s, "
            f"one bare SDK call {start['sdk']:.2f} s: x{start['job'] / start['sdk']:.2f}"
        )
    sys.stdout.flush()
    headline(key, p, rows, b, start if p.get("django") else None)


def headline(key: str, p: dict, rows: list[tuple[str, dict, bool]], b: float, start: dict | None) -> None:
    """record() the headline ratios for bench/summary.py."""
    by = {name: r for name, r, _ in rows}
    ok = lambda r: r["failed"] == 0  # noqa: E731
    if p.get("capacity"):
        for name in ("submit_job --run", "engine (defaults)"):
            r = by.get(name)
            if r is None:
                continue
            ratio = r["wall"] / b
            record(
                "perf",
                f"{key} {name} vs bound",
                r["wall"],
                "s",
                reference=f"bound {b:.2f} s",
                ratio=ratio,
                goal="<= 1.15, 0 failed",
                met=ratio <= 1.15 and ok(r),
            )
            for k in p["plain"]:
                ref = by[f"plain Semaphore({k})"]
                record(
                    "perf",
                    f"{key} {name} vs Semaphore({k})",
                    r["wall"],
                    "s",
                    reference=f"Semaphore({k}) {ref['wall']:.2f} s",
                    ratio=r["wall"] / ref["wall"],
                )
    elif key == "rpm":
        r = by["engine (defaults)"]
        ratio = r["wall"] / b
        record(
            "perf",
            f"{key} engine vs bound ({r['429']} 429s)",
            r["wall"],
            "s",
            reference=f"bound {b:.2f} s",
            ratio=ratio,
            goal="<= 1.05, <= 3 429s, 0 failed",
            met=ratio <= 1.05 and r["429"] <= 3 and ok(r),
        )
    if start is not None:
        record(
            "perf",
            "start-up: 1-item submit_job --run",
            start["job"],
            "s",
            reference=f"one bare SDK call {start['sdk']:.2f} s",
            ratio=start["job"] / start["sdk"],
            goal="~1 (keep it there)",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="lat600,lat50,lat6000,rpm,tier4")
    ap.add_argument("--quick", action="store_true", help="a quarter of the items: a smoke run")
    args = ap.parse_args()
    for key in args.profiles.split(","):
        run_profile(key.strip(), args.quick)


if __name__ == "__main__":
    main()
