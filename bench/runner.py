"""Benchmark: what the Django runner costs on top of the bare engine and the plain SDK.

Prints tables with
  (1) wall time and CPU per item of process_job (runner + SQLite writes) against
      the bare engine and the plain SDK pattern (one client, a Semaphore, gather)
      on the same items and the same simulator profile (latency-bound, RPM-bound,
      tier 4);
  (2) event-loop lag (p50/p99) during each runner job on SQLite, the GC's collections, and
      the CPU time of the loop's passes (p99/p99.9/max: what a loaded machine does not
      stretch; a 10 ms sleep waits out the pass running when it is due);
  (3) peak RSS of a process that runs a 1,000-item and a 100,000-item job.

Goals (issues 4 and 17): (1) <= 1.10x the wall time and <= 1.5x the CPU of the bare
engine, CPU per item <= 1.2x the plain SDK pattern; (2) p99 lag <= 20 ms;
(3) RSS(100k) <= 1.5x RSS(1k). Headlines go to bench.results.record.

``--profile`` prints a py-spy top-10 (all threads) of a runner job instead.

Usage: .venv/bin/python bench/runner.py [--n 2000] [--big 100000] [--skip-rss] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import record  # noqa: E402

# Latency-bound profile (a) of bench/engine.py, and an RPM-bound one (b).
PROFILES = {
    "a latency-bound": ["--capacity", "200", "--ttft", "0.4", "--tps", "300"],
    "b rpm-bound": ["--rpm", "600", "--burst", "5", "--ttft", "0.4", "--tps", "300"],
    "t tier 4": ["--tier", "4", "--ttft", "0.45", "--tps", "1000"],  # bench/limits.py's tier-4 account
}
PLAIN_K = {"a latency-bound": 200, "t tier 4": 200}  # the plain pattern's Semaphore(k) (none: RPM-bound)


def texts(n: int) -> list[str]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "cat", "watches"]
    return [f"Doc {i:06d}: " + " ".join(words[(i + k) % len(words)] for k in range(10 + i % 60)) for i in range(n)]


def setup_django(db_path: str, sim_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret"),
        DATABASE_URL=f"sqlite:///{db_path}",
        LLMJOBS_SIMULATOR_URL=sim_url,
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("ANTHROPIC_API_KEY", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_job(n: int) -> int:
    from llmjobs.jobs import job_create

    return job_create(
        name=f"bench {n}", template="Summarize: {text}", model="claude-haiku-4-5", max_tokens=64, texts=texts(n)
    ).pk


def bare_calls(n: int) -> list:
    """The runner's params for the bench's items, as engine calls: built before a measured run
    (building 2,000 up front is one long loop pass, which the runner, rendering just in time, never has)."""
    from llmjobs.engine import Call
    from llmjobs.prompts import build_params

    class J:  # the same params the runner builds
        model, max_tokens, prompt_template, system_prompt, stop_sequences = (
            "claude-haiku-4-5",
            64,
            "Summarize: {text}",
            "",
            [],
        )

    return [Call(key=i, params=build_params(J, {"text": t})) for i, t in enumerate(texts(n))]


async def run_bare_engine(calls: list, sim_url: str) -> None:
    from llmjobs.engine import Engine

    async with Engine(base_url=sim_url, api_key="bench") as engine:
        outcomes = await engine.run_ordered(calls)
    assert all(o.status == "succeeded" for o in outcomes), "bare engine run had failures"


async def run_plain(n: int, sim_url: str, k: int) -> int:
    """The plain SDK pattern (``bench.limits.run_plain``: one client, ``Semaphore(k)``,
    gather, the SDK's own retries) on this bench's items; returns the failed count."""
    from bench.limits import run_plain as plain_gather
    from llmjobs.prompts import build_params

    class J:
        model, max_tokens, prompt_template, system_prompt, stop_sequences = (
            "claude-haiku-4-5",
            64,
            "Summarize: {text}",
            "",
            [],
        )

    return await plain_gather(sim_url, [build_params(J, {"text": t}) for t in texts(n)], k)


class GcPauses:
    """The cyclic GC's collections while the block runs: how many, and the longest (ms of CPU)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t0 = 0.0

    def _cb(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.pauses.append(time.thread_time() - self._t0)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def __str__(self) -> str:
        return f"{len(self.pauses)} / {1000 * max(self.pauses, default=0.0):.0f}"


class LoopMeter:
    """CPU time (``thread_time``) of every event-loop iteration while the block runs: the loop's
    long passes as they cost, not as a loaded machine stretches them (lag, wall) — the
    noise-robust view of the same thing (a 10 ms sleep waits out the pass running when it is due)."""

    def __init__(self) -> None:
        self.iterations: list[float] = []
        self._saved: Any = None

    def __enter__(self) -> LoopMeter:
        import asyncio.base_events as base_events

        self._saved = run_once = base_events.BaseEventLoop._run_once
        iterations = self.iterations

        def metered(loop: Any) -> None:
            t0 = time.thread_time()
            run_once(loop)
            iterations.append(time.thread_time() - t0)

        base_events.BaseEventLoop._run_once = metered  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio.base_events as base_events

        base_events.BaseEventLoop._run_once = self._saved  # type: ignore[method-assign]

    def __str__(self) -> str:
        it = sorted(self.iterations)
        return f"{pct(it, 0.99):.1f} / {pct(it, 0.999):.1f} / {pct(it, 1.0):.1f}"


async def with_lag(coro) -> tuple[list[float], object]:
    """Run ``coro`` while sampling event-loop lag (how late a 10 ms sleep wakes up)."""
    lags: list[float] = []
    loop = asyncio.get_running_loop()
    done = False

    async def monitor() -> None:
        interval = 0.01
        while not done:
            start = loop.time()
            await asyncio.sleep(interval)
            lags.append(max(0.0, loop.time() - start - interval))

    task = asyncio.create_task(monitor())
    try:
        result = await coro
    finally:
        done = True
        await task
    lags.sort()
    return lags, result


async def run_with_lag(job_id: int) -> tuple[list[float], object]:
    from llmjobs.runner import JobRunner

    return await with_lag(JobRunner(job_id).run())


def pct(lags: list[float], q: float) -> float:
    return 1000 * lags[min(len(lags) - 1, int(len(lags) * q))] if lags else 0.0


def sim_stats(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/_sim/stats?brief=1") as r:
        return json.loads(r.read())


def sim_reset(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(url + "/_sim/reset", method="POST", data=b"")).close()


def compare(n: int, profile: str, args: list[str]) -> dict:
    from asgiref.sync import async_to_sync

    from llmjobs.models import BatchJob
    from llmjobs.simulator.server import SimulatorProcess

    with SimulatorProcess(*args) as sim:
        os.environ["LLMJOBS_SIMULATOR_URL"] = sim.base_url
        from django.conf import settings

        settings.LLMJOBS_SIMULATOR_URL = sim.base_url
        from llmjobs.conf import llmjobs_settings

        llmjobs_settings.cache_clear()  # the settings object is read once
        asyncio.run(run_bare_engine(bare_calls(20), sim.base_url))  # warm-up: lazy imports and first connections
        asyncio.run(run_plain(20, sim.base_url, 10))
        time.sleep(0.5)
        sim_reset(sim.base_url)
        # bare engine
        calls = bare_calls(n)
        c0, t0 = cpu(), time.perf_counter()
        with GcPauses() as engine_gc, LoopMeter() as engine_loop:
            engine_lags, _ = asyncio.run(with_lag(run_bare_engine(calls, sim.base_url)))
        del calls
        engine_wall, engine_cpu = time.perf_counter() - t0, cpu() - c0
        time.sleep(6 if "rpm" in profile else 0.5)  # let the simulator's buckets refill
        sim_reset(sim.base_url)
        plain_cpu = plain_failed = None
        k = PLAIN_K.get(profile)
        if k:
            c0 = cpu()
            plain_failed = asyncio.run(run_plain(n, sim.base_url, k))
            plain_cpu = cpu() - c0
            time.sleep(0.5)
            sim_reset(sim.base_url)
        # the runner, on SQLite, same items
        job_id = make_job(n)
        c0, t0 = cpu(), time.perf_counter()
        with GcPauses() as runner_gc, LoopMeter() as runner_loop:
            lags, _report = async_to_sync(run_with_lag)(job_id)
        runner_wall, runner_cpu = time.perf_counter() - t0, cpu() - c0
        job = BatchJob.objects.get(pk=job_id)
        assert job.succeeded_count == n, f"runner: {job.succeeded_count}/{n} succeeded ({job.status})"
        stats = sim_stats(sim.base_url)
    return {
        "profile": profile,
        "n": n,
        "engine_wall": engine_wall,
        "runner_wall": runner_wall,
        "engine_cpu_ms": 1000 * engine_cpu / n,
        "plain_cpu_ms": None if plain_cpu is None else 1000 * plain_cpu / n,
        "plain_k": k,
        "plain_failed": plain_failed,
        "runner_cpu_ms": 1000 * runner_cpu / n,
        "lag_p50": pct(lags, 0.5),
        "lag_p99": pct(lags, 0.99),
        "lag_max": pct(lags, 1.0),
        "engine_lag_p99": pct(engine_lags, 0.99),
        "engine_lag_max": pct(engine_lags, 1.0),
        "paid_twice": stats["prompts"]["paid_more_than_once"],
        "gc": f"{engine_gc} | {runner_gc}",
        "loop": f"{engine_loop} | {runner_loop}",
    }


def profile_runner(n: int) -> None:
    """A py-spy top-10 (all threads) of process_job on the latency-bound profile."""
    from asgiref.sync import async_to_sync

    from bench.profiling import Sampler
    from llmjobs.simulator.server import SimulatorProcess

    with SimulatorProcess(*PROFILES["a latency-bound"]) as sim:
        from django.conf import settings

        from llmjobs.conf import llmjobs_settings

        settings.LLMJOBS_SIMULATOR_URL = sim.base_url
        llmjobs_settings.cache_clear()
        job_id = make_job(n)
        import anthropic  # noqa: F401  (imports are start-up, not per-item work)

        import llmjobs.runner  # noqa: F401

        with Sampler() as sampler:
            async_to_sync(run_with_lag)(job_id)
    print(sampler.table(title=f"process_job, {n} items, latency-bound profile: top 10 by own samples"))
    print()
    print("inclusive:")
    print(sampler.inclusive(80))


RSS_CHILD = r"""
import os, sys, resource, asyncio
sys.path.insert(0, {root!r})
os.environ.update(DJANGO_SETTINGS_MODULE="project.settings", DATABASE_URL="sqlite:///{db}",
                  LLMJOBS_SIMULATOR_URL={url!r}, SECRET_KEY="bench", LOG_LEVEL="WARNING")
os.environ.pop("ANTHROPIC_API_KEY", None)
import django; django.setup()
from llmjobs.runner import process_job
report = process_job({job_id})
print(report.succeeded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def rss(n: int, tmp: str) -> tuple[float, float]:
    """Peak RSS (MiB) of a fresh process that runs an n-item job, and its wall time."""
    from llmjobs.simulator.server import SimulatorProcess

    db = os.path.join(tmp, f"rss{n}.sqlite3")
    env = dict(
        os.environ, DATABASE_URL=f"sqlite:///{db}", DJANGO_SETTINGS_MODULE="project.settings", SECRET_KEY="bench"
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    make = f"from bench.runner import make_job; print(make_job({n}))"
    job_id = int(
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", make],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
    )
    with SimulatorProcess() as sim:
        code = RSS_CHILD.format(root=str(ROOT), db=db, url=sim.base_url, job_id=job_id)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    succeeded, maxrss_kb = out.stdout.split()[-2:]
    assert int(succeeded) == n, out.stdout
    return int(maxrss_kb) / 1024, wall


def gil_check() -> None:
    """gil.py's mechanism, isolated: a loop pass of 20 socket send/recv pairs while another thread
    runs pure Python (the writer's ORM), at CPython's 5 ms switch interval and at gil.py's 1 ms.
    Each syscall lets the other thread take the GIL; getting it back waits up to the interval."""
    import socket
    import statistics
    import threading

    def busy(stop: threading.Event) -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    saved = sys.getswitchinterval()
    print("| other thread | switch interval | pass median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|")
    try:
        for busy_on in (False, True):
            for interval in (0.005, 0.001):
                sys.setswitchinterval(interval)
                a, b = socket.socketpair()
                b.setblocking(False)
                stop = threading.Event()
                thread = threading.Thread(target=busy, args=(stop,), daemon=True)
                if busy_on:
                    thread.start()
                walls = []
                for _ in range(100):
                    t0 = time.perf_counter()
                    for _ in range(20):
                        a.send(b"x" * 100)
                        try:
                            b.recv(4096)
                        except BlockingIOError:
                            pass
                    walls.append(time.perf_counter() - t0)
                    time.sleep(0.005)
                stop.set()
                if busy_on:
                    thread.join()
                a.close()
                b.close()
                walls.sort()
                print(
                    f"| {'busy' if busy_on else 'idle'} | {1000 * interval:.0f} ms | "
                    f"{1000 * statistics.median(walls):.1f} | {pct(walls, 0.9):.1f} | {pct(walls, 1.0):.1f} |"
                )
    finally:
        sys.setswitchinterval(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="items per comparison run (default 2000)")
    parser.add_argument("--big", type=int, default=100_000, help="items of the large RSS run (default 100000)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the RSS runs (3)")
    parser.add_argument("--profiles", default=",".join(k.split()[0] for k in PROFILES), help="a,b,t")
    parser.add_argument("--profile", action="store_true", help="only print a py-spy top-10 of a runner run")
    parser.add_argument(
        "--gil-interval",
        type=float,
        default=None,
        help="the GIL switch interval (s) for the whole run instead of the runner's own (gil.py): isolates its effect",
    )
    parser.add_argument("--gil-check", action="store_true", help="only print gil.py's mechanism, isolated")
    opts = parser.parse_args()
    if opts.gil_check:
        gil_check()
        return
    if opts.gil_interval is not None:
        sys.setswitchinterval(opts.gil_interval)
        import llmjobs.gil

        llmjobs.gil.SWITCH_INTERVAL = opts.gil_interval
    if opts.profile:
        with tempfile.TemporaryDirectory() as tmp:
            setup_django(os.path.join(tmp, "bench.sqlite3"), "http://127.0.0.1:1")
            profile_runner(opts.n)
        return

    with tempfile.TemporaryDirectory() as tmp:
        setup_django(os.path.join(tmp, "bench.sqlite3"), "http://127.0.0.1:1")
        wanted = set(opts.profiles.split(","))
        # The RPM-bound profile runs at 10 items/s: 600 items keep it near a minute.
        rows = [
            compare(opts.n if not name.startswith("b") else min(opts.n, 600), name, args)
            for name, args in PROFILES.items()
            if name.split()[0] in wanted
        ]
        print()
        print("(1) process_job vs the bare engine and the plain SDK pattern on the same items;")
        print("(2) event-loop lag (10 ms probe) during each")
        header = (
            "profile",
            "items",
            "engine s",
            "runner s",
            "wall x",
            "engine CPU ms/item",
            "plain SDK CPU ms/item",
            "runner CPU ms/item",
            "CPU x engine",
            "CPU x plain",
            "runner lag p50/p99/max ms",
            "bare engine lag p99/max ms",
            "paid twice",
            "GC collections / longest ms CPU: engine | runner",
            "loop pass CPU p99/p99.9/max ms: engine | runner",
        )
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            plain = r["plain_cpu_ms"]
            plain_s = f"{plain:.2f} (k={r['plain_k']}, {r['plain_failed']} failed)" if plain else "-"
            vs_plain = f"{r['runner_cpu_ms'] / plain:.2f}" if plain else "-"
            print(
                f"| {r['profile']} | {r['n']} | {r['engine_wall']:.2f} | {r['runner_wall']:.2f} | "
                f"{r['runner_wall'] / r['engine_wall']:.3f} | {r['engine_cpu_ms']:.2f} | {plain_s} | "
                f"{r['runner_cpu_ms']:.2f} | {r['runner_cpu_ms'] / r['engine_cpu_ms']:.2f} | {vs_plain} | "
                f"{r['lag_p50']:.1f} / {r['lag_p99']:.1f} / {r['lag_max']:.1f} | "
                f"{r['engine_lag_p99']:.1f} / {r['engine_lag_max']:.1f} | {r['paid_twice']} | {r['gc']} | {r['loop']} |"
            )
            name = r["profile"].split(" ", 1)[1]
            ratio = r["runner_cpu_ms"] / r["engine_cpu_ms"]
            record(
                "runner",
                f"runner CPU vs bare engine, {name}",
                r["runner_cpu_ms"],
                "ms/item",
                reference=f"bare engine {r['engine_cpu_ms']:.2f} ms/item",
                ratio=ratio,
                goal="<= 1.5",
                met=ratio <= 1.5,
            )
            if plain:
                ratio = r["runner_cpu_ms"] / plain
                record(
                    "runner",
                    f"CPU per item vs plain SDK, {name}",
                    r["runner_cpu_ms"],
                    "ms/item",
                    reference=f"plain Semaphore({r['plain_k']}) {plain:.2f} ms/item",
                    ratio=ratio,
                    goal="<= 1.2",
                    met=ratio <= 1.2,
                )
            record(
                "runner",
                f"runner loop lag p99, {name}",
                r["lag_p99"],
                "ms",
                reference=f"bare engine p99 {r['engine_lag_p99']:.1f} ms",
                ratio=r["lag_p99"] / max(r["engine_lag_p99"], 1e-9),
                goal="<= 20 ms",
                met=r["lag_p99"] <= 20,
            )
        print("goals: wall x <= 1.10, CPU x engine <= 1.5, CPU x plain <= 1.2, lag p99 <= 20 ms")
        if not opts.skip_rss:
            small, small_wall = rss(1000, tmp)
            big, big_wall = rss(opts.big, tmp)
            print()
            print("(3) peak RSS of a process running a whole job (zero-latency simulator)")
            print("| items | peak RSS MiB | wall s |")
            print("|---|---|---|")
            print(f"| 1,000 | {small:.1f} | {small_wall:.1f} |")
            print(f"| {opts.big:,} | {big:.1f} | {big_wall:.1f} |")
            print(f"ratio {big / small:.2f} (goal <= 1.5)")
            record(
                "runner",
                f"peak RSS, {opts.big:,} items",
                big,
                "MiB",
                reference=f"1,000 items {small:.1f} MiB",
                ratio=big / small,
                goal="<= 1.5",
                met=big / small <= 1.5,
            )


if __name__ == "__main__":
    main()
