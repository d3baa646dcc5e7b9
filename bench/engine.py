"""Benchmark: the engine against the article's patterns on simulated accounts.

    .venv/bin/python bench/engine.py [--quick] [--n N] [--profiles a,b,c,d]

For each profile a simulator is started (a subprocess, so its CPU is not
counted) and the same N summarisation items (input texts of varied length)
go through each approach. Every approach uses the same client kind: the SDK's
``AsyncAnthropic`` with its aiohttp transport and ``max_retries=0``. The
article's approaches call ``client.messages.create`` inside the article's
helpers: a 30 s ``asyncio.wait_for`` timeout and its retry (3 tries,
exponential backoff 1 s, 2 s + jitter on ``RateLimitError``). The engine runs
with its defaults.

Slow approaches run on a prefix of the items and are extrapolated linearly
(marked ``*``, with the prefix size in column ``n``); their counters are for
the prefix. On rate-limited profiles a prefix also enjoys the bucket's initial
burst, so the extrapolation flatters them. "Not slower than the best article
approach" is checked against the article approaches that lost no item (an
unbounded gather that drops most items is fast but does not do the job), and
goodput (succeeded items per second) against all of them. A benchmark reports
numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anthropic

from llmjobs.engine import Call, Engine, Governor, make_client
from llmjobs.simulator.server import SimulatorProcess

MODEL = "claude-sonnet-5-5"
MAX_TOKENS = 128
ARTICLE_TIMEOUT = 30.0

_WORDS = [
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
    "and",
    "clearer",
    "pricing",
    "on",
    "the",
    "new",
    "plans",
]


def make_items(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        words = rng.randint(10, 400)
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        items.append(
            {
                "model": MODEL,
                "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": f"Summarize document #{i} in two sentences:\n\n{text}."}],
            }
        )
    return items


@dataclass
class Profile:
    key: str
    title: str
    args: dict
    n: int
    quick_n: int
    prefix: dict  # approach -> prefix size (None = all)

    @property
    def cli(self) -> list[str]:
        out = []
        for k, v in self.args.items():
            out += ["--" + k.replace("_", "-"), str(v)]
        return out


LAT = {"ttft": 0.5, "tps": 100}
PROFILES = {
    "a": Profile(
        "a",
        "latency-bound: no rate limits, --capacity 200",
        {**LAT, "capacity": 200},
        6000,
        800,
        {"sequential": 5, "sem5": 60, "sem10": 120},
    ),
    "b": Profile(
        "b",
        "RPM-bound: --rpm 600 --burst 5",
        {**LAT, "rpm": 600, "burst": 5},
        400,
        150,
        {"sequential": 5, "sem5": 60, "sem10": 200},
    ),
    "c": Profile(
        "c",
        "OTPM-bound: --otpm 60000 --burst 10",
        {**LAT, "otpm": 60000, "burst": 10},
        500,
        200,
        {"sequential": 5, "sem5": 60, "sem10": 120},
    ),
    "d": Profile(
        "d",
        "faults: --fail-500 0.05 --fail-529 0.02 --hang 0.01",
        {**LAT, "fail_500": 0.05, "fail_529": 0.02, "hang": 0.01},
        1000,
        300,
        {"sequential": 5, "sem5": 80, "sem10": 150},
    ),
}
APPROACHES = ("sequential", "gather", "sem5", "sem10", "engine")
LABEL = {
    "sequential": "sequential",
    "gather": "gather, no limit (+retry)",
    "sem5": "gather + Semaphore(5)",
    "sem10": "gather + Semaphore(10)",
    "engine": "engine (defaults)",
}


# -- the article's code -----------------------------------------------------------------------
async def article_call(client, params):
    for attempt in range(3):
        try:
            return await asyncio.wait_for(client.messages.create(**params), ARTICLE_TIMEOUT)
        except anthropic.RateLimitError:
            if attempt == 2:
                raise
            await asyncio.sleep(2**attempt + random.random())


async def guarded(coro):
    try:
        await coro
        return True
    except Exception:
        return False


async def run_article(kind: str, client, items: list[dict]) -> int:
    """Returns the number of failed items."""
    if kind == "sequential":
        oks = [await guarded(article_call(client, p)) for p in items]
    elif kind == "gather":
        oks = await asyncio.gather(*(guarded(article_call(client, p)) for p in items))
    else:
        sem = asyncio.Semaphore(5 if kind == "sem5" else 10)

        async def bounded(p):
            async with sem:
                return await guarded(article_call(client, p))

        oks = await asyncio.gather(*(bounded(p) for p in items))
    return sum(1 for ok in oks if not ok)


class ProbeGovernor(Governor):
    """Records when 429s happen, for the '429s after the first 10 s' goal."""

    __slots__ = ("events",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.events: list[tuple[float, str]] = []

    def acquire(self, in_cost, out_cost, now=None):
        t = super().acquire(in_cost, out_cost, now)
        self.events.append((t.sent_at, "req"))
        return t

    def on_rate_limited(self, ticket, retry_after=None, headers=None, now=None):
        self.events.append((ticket.sent_at, "429"))
        return super().on_rate_limited(ticket, retry_after, headers, now)


async def run_engine(client, items: list[dict], info: dict) -> int:
    gov = ProbeGovernor()
    async with Engine(client=client, governor=gov) as engine:
        t0 = gov.now()
        outcomes = await engine.run_ordered([Call(i, p) for i, p in enumerate(items)])
        st = engine.stats
    late = [(t - t0, k) for t, k in gov.events if t - t0 >= 10.0]
    info.update(
        late_requests=sum(1 for _, k in late if k == "req"),
        late_429=sum(1 for _, k in late if k == "429"),
        peak=st.peak_in_flight,
        ceiling=st.ceiling,
        limits=st.limits,
        statuses={s: sum(1 for o in outcomes if o.status == s) for s in ("succeeded", "failed", "cancelled")},
        errors={},
    )
    for o in outcomes:
        if o.status == "failed":
            info["errors"][o.error_type] = info["errors"].get(o.error_type, 0) + 1
    return sum(1 for o in outcomes if o.status != "succeeded")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(kind: str, base_url: str, items: list[dict], info: dict) -> tuple[float, float, int]:
    async with make_client(base_url=base_url) as client:
        c0, t0 = cpu(), time.perf_counter()
        if kind == "engine":
            failed = await run_engine(client, items, info)
        else:
            failed = await run_article(kind, client, items)
        wall, used = time.perf_counter() - t0, cpu() - c0
    return wall, used, failed


def bound(profile: Profile, n: int, out_tokens: int) -> tuple[float, str]:
    a = profile.args
    ttft, tps = a["ttft"], a["tps"]
    mean_out = out_tokens / n
    lat_sum = n * ttft + out_tokens / tps
    tail = ttft + mean_out / tps
    parts = [
        f"sum(latency) = N*ttft + sum(out)/tps = {n}*{ttft} + {out_tokens}/{tps} = {lat_sum:.0f} s",
        f"tail = ttft + mean_out/tps = {tail:.2f} s",
    ]
    capacity = a.get("capacity") or float("inf")
    lat_bound = lat_sum / capacity
    rate_bound = 0.0
    if a.get("rpm"):
        rate = a["rpm"] / 60
        burst = a["rpm"] * a.get("burst", 60) / 60
        rate_bound = max(0.0, (n - burst) / rate)
        parts.append(f"RPM: (N - burst {burst:.0f}) / {rate:g} per s = {rate_bound:.1f} s")
    if a.get("otpm"):
        rate = a["otpm"] / 60
        burst = a["otpm"] * a.get("burst", 60) / 60
        rate_bound = max(rate_bound, (out_tokens - burst) / rate)
        parts.append(f"OTPM: (sum(out) {out_tokens} - burst {burst:.0f}) / {rate:g} tok/s = {rate_bound:.1f} s")
    if capacity != float("inf"):
        parts.append(f"capacity: sum(latency) / {capacity} = {lat_bound:.1f} s")
    total = max(rate_bound, lat_bound) + tail
    parts.append(f"bound = max(...) + tail = {total:.1f} s")
    return total, "; ".join(parts)


def run_profile(profile: Profile, n: int, quick: bool, approaches) -> None:
    items = make_items(n)
    rows = []
    engine_info: dict = {}
    with SimulatorProcess(*profile.cli) as sim:
        out_tokens = None
        for kind in approaches:
            prefix = profile.prefix.get(kind)
            k = min(n, prefix) if prefix else n
            if quick and kind != "engine":
                k = min(k, max(4, k // 3))
            sim.reset()
            info: dict = {}
            wall, used, failed = asyncio.run(measure(kind, sim.base_url, items[:k], info))
            s = sim.stats()
            if kind == "engine":
                engine_info = info
                out_tokens = s["output_tokens"]
            scale = n / k
            rows.append(
                {
                    "kind": kind,
                    "n": k,
                    "wall": wall * scale,
                    "measured": wall,
                    "extrapolated": k < n,
                    "429": s["by_status"].get("429", 0),
                    "529": s["by_status"].get("529", 0),
                    "failed": failed,
                    "extra_paid": s["prompts"]["extra_paid_calls"],
                    "cpu": used,
                    "cpu_item": used / k * 1000,
                    "requests": s["requests"],
                }
            )
            print(f"  [{profile.key}] {LABEL[kind]:<26} n={k:<5} wall={wall:7.1f}s", file=sys.stderr, flush=True)
    if out_tokens is None:  # no engine row: estimate
        out_tokens = n * 70
    b, how = bound(profile, n, out_tokens)
    print(f"\n### ({profile.key}) {profile.title}  N={n}; simulator: {' '.join(profile.cli)}")
    print(f"bound: {how}")
    hdr = (
        f"| {'approach':<28} | {'n':>5} | {'wall s':>8} | {'eff.':>5} | {'429s':>5} | {'529s':>5} | "
        f"{'failed':>6} | {'paid >1':>7} | {'CPU s':>6} | {'CPU ms/item':>11} |"
    )
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        mark = "*" if r["extrapolated"] else ""
        wall = f"{r['wall']:.1f}{mark}"
        print(
            f"| {LABEL[r['kind']]:<28} | {r['n']:>5} | {wall:>8} | {b / r['wall']:>5.2f} | {r['429']:>5} | "
            f"{r['529']:>5} | {r['failed']:>6} | {r['extra_paid']:>7} | {r['cpu']:>6.2f} | {r['cpu_item']:>11.2f} |"
        )
    byk = {r["kind"]: r for r in rows}
    if "engine" in byk:
        e = byk["engine"]
        print(
            f"engine: peak in flight {engine_info['peak']}, final ceiling {engine_info['ceiling']:.0f}, "
            f"learned limits {engine_info['limits']}, outcomes {engine_info['statuses']}, "
            f"failures by type {engine_info['errors'] or '{}'}"
        )
        late_req, late_429 = engine_info["late_requests"], engine_info["late_429"]
        pct = 100.0 * late_429 / late_req if late_req else 0.0
        checks = []
        if profile.key in "abc":
            checks.append(("efficiency >= 0.95", b / e["wall"] >= 0.95, f"{b / e['wall']:.2f}"))
            checks.append(("0 failed items", e["failed"] == 0, str(e["failed"])))
        checks.append(("429s <= 1% after 10 s", pct <= 1.0, f"{late_429}/{late_req} = {pct:.2f}%"))
        article = [r for k2, r in byk.items() if k2 != "engine"]
        complete = [r for r in article if r["failed"] == 0]
        if complete:  # the fastest article approach that got every item done
            best = min(complete, key=lambda r: r["wall"])
            checks.append(
                (
                    "not slower than the best article approach that completes every item",
                    e["wall"] <= best["wall"],
                    f"{e['wall']:.1f}s vs {LABEL[best['kind']]} {best['wall']:.1f}s",
                )
            )
        if article:  # items succeeded per second, counting the ones lost by the others

            def goodput(r):
                return (r["n"] - r["failed"]) / r["measured"]

            best = max(article, key=goodput)
            checks.append(
                (
                    "goodput (succeeded items/s) >= every article approach",
                    goodput(e) >= goodput(best),
                    f"{goodput(e):.1f}/s vs {LABEL[best['kind']]} {goodput(best):.1f}/s",
                )
            )
        if profile.key == "d":
            st = engine_info["statuses"]
            checks.append(("no item lost", st["succeeded"] + st["failed"] == n, str(st)))
        if "sem10" in byk:
            ratio = e["cpu_item"] / byk["sem10"]["cpu_item"]
            checks.append(("CPU/item <= 1.3x Semaphore(10)", ratio <= 1.3, f"{ratio:.2f}x"))
        for name, ok, detail in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="items per profile (default: per profile)")
    ap.add_argument("--profiles", default="a,b,c,d", help="comma-separated profiles among a,b,c,d")
    ap.add_argument("--approaches", default=",".join(APPROACHES), help="comma-separated: " + ",".join(APPROACHES))
    ap.add_argument("--quick", action="store_true", help="small N, short prefixes: a smoke run")
    args = ap.parse_args()
    approaches = [a for a in args.approaches.split(",") if a]
    started = time.perf_counter()
    for key in args.profiles.split(","):
        profile = PROFILES[key.strip()]
        n = args.n or (profile.quick_n if args.quick else profile.n)
        run_profile(profile, n, args.quick, approaches)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
