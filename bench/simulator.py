"""How many requests per second the simulator serves at zero latency.

Starts ``python -m llmjobs.simulator`` (no latency, no limits, no faults) and
drives ``POST /v1/messages`` with keep-alive aiohttp clients, in one or more
client processes (plain, streaming and structured-output requests), then once through the real SDK (AsyncAnthropic with
DefaultAioHttpClient) for reference. Prints a table. Goal: >= 2,000 req/s.

    .venv/bin/python bench/simulator.py [--duration 5] [--concurrency 64,256] [--processes 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import orjson

from llmjobs.simulator.server import SimulatorProcess

MODEL = "claude-haiku-4-5"
HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}


#: The output schema of the structured row: an extraction job's typical shape.
SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "product": {"type": "string"},
        "reason": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment", "product", "reason"],
    "additionalProperties": False,
}


def _payload(i: int, stream: bool, structured: bool = False) -> bytes:
    # A small set of distinct prompts, like a batch job with repeats.
    request = {
        "model": MODEL,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": f"Summarize document {i % 500}: the quick brown fox."}],
    }
    if structured:
        request["messages"] = [{"role": "user", "content": f"Ticket {i % 500}: the SuperBlender broke, refund please."}]
        request["output_config"] = {"format": {"type": "json_schema", "schema": SCHEMA}}
    return orjson.dumps(request)


async def _drive(
    base_url: str, concurrency: int, duration: float, stream: bool, structured: bool = False
) -> tuple[int, int, float, list[float]]:
    """Run ``concurrency`` keep-alive workers for ``duration`` s: (ok, errors, elapsed, latencies)."""
    url = base_url + "/v1/messages"
    bodies = [_payload(i, stream, structured) for i in range(500)]
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        began = time.perf_counter()
        deadline = began + duration

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=bodies[i % 500]) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)
                i += concurrency

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - began
    return len(latencies) - errors, errors, elapsed, latencies


def _client_process(base_url: str, concurrency: int, duration: float, stream: bool, queue, structured=False) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    queue.put(asyncio.run(_drive(base_url, concurrency, duration, stream, structured)))


def run_raw(
    base_url: str, concurrency: int, processes: int, duration: float, stream: bool, structured: bool = False
) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per_process = max(1, concurrency // processes)
    workers = [
        ctx.Process(target=_client_process, args=(base_url, per_process, duration, stream, queue, structured))
        for _ in range(processes)
    ]
    for proc in workers:
        proc.start()
    results = [queue.get() for _ in workers]
    for proc in workers:
        proc.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    latencies = [lat for r in results for lat in r[3]]
    name = f"aiohttp raw{' stream' if stream else ''}{' structured' if structured else ''}"
    return _row(name, per_process * processes, processes, ok, errors, elapsed, latencies)


async def _sdk(base_url: str, concurrency: int, total: int) -> tuple[int, int, float, list[float]]:
    from anthropic import AsyncAnthropic, DefaultAioHttpClient

    latencies: list[float] = []
    errors = 0
    semaphore = asyncio.Semaphore(concurrency)
    async with AsyncAnthropic(
        base_url=base_url, api_key="bench", max_retries=0, http_client=DefaultAioHttpClient()
    ) as client:

        async def one(i: int) -> None:
            nonlocal errors
            async with semaphore:
                started = time.perf_counter()
                try:
                    await client.messages.create(
                        model=MODEL,
                        max_tokens=256,
                        messages=[{"role": "user", "content": f"Summarize document {i % 500}: the quick brown fox."}],
                    )
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        await one(-1)  # warm up the connection pool
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - started
    return total - errors, errors, elapsed, latencies


def run_sdk(base_url: str, concurrency: int, total: int) -> dict:
    ok, errors, elapsed, latencies = asyncio.run(_sdk(base_url, concurrency, total))
    return _row("anthropic SDK (aiohttp)", concurrency, 1, ok, errors, elapsed, latencies)


def _row(client: str, concurrency: int, processes: int, ok: int, errors: int, seconds: float, latencies: list[float]):
    latencies = sorted(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return {
        "client": client,
        "procs": processes,
        "concurrency": concurrency,
        "requests": ok,
        "errors": errors,
        "seconds": seconds,
        "req/s": ok / seconds if seconds else 0.0,
        "p50 ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99 ms": p99 * 1000,
    }


def print_table(rows: list[dict]) -> None:
    columns = ["client", "procs", "concurrency", "requests", "errors", "seconds", "req/s", "p50 ms", "p99 ms"]
    formats = {"seconds": "{:.2f}", "req/s": "{:,.0f}", "p50 ms": "{:.1f}", "p99 ms": "{:.1f}"}
    cells = [[formats.get(c, "{}").format(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    print("-+-".join("-" * w for w in widths))
    for r in cells:
        print(" | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per raw-client run")
    parser.add_argument("--concurrency", default="64,256", help="comma-separated in-flight request counts")
    parser.add_argument("--processes", default="1,2", help="comma-separated client process counts")
    parser.add_argument("--sdk-requests", type=int, default=3000, help="requests for the SDK reference row")
    parser.add_argument("--sdk-concurrency", type=int, default=64)
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming row")
    parser.add_argument("--no-structured", action="store_true", help="skip the structured-output row")
    args = parser.parse_args()

    rows = []
    with SimulatorProcess("--ttft", "0", "--tps", "0") as sim:
        print(f"simulator at {sim.base_url} (zero latency, no limits); {os.cpu_count()} CPUs\n", flush=True)
        for processes in (int(p) for p in args.processes.split(",")):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                sim.reset()
                rows.append(run_raw(sim.base_url, concurrency, processes, args.duration, stream=False))
                print(f"  done: {rows[-1]['client']} x{processes} c={concurrency}", file=sys.stderr, flush=True)
        if not args.no_stream:
            sim.reset()
            rows.append(run_raw(sim.base_url, int(args.concurrency.split(",")[0]), 1, args.duration, stream=True))
        if not args.no_structured:  # output_config.format with a JSON schema
            sim.reset()
            concurrency = int(args.concurrency.split(",")[0])
            rows.append(run_raw(sim.base_url, concurrency, 1, args.duration, stream=False, structured=True))
        sim.reset()
        rows.append(run_sdk(sim.base_url, args.sdk_concurrency, args.sdk_requests))
        stats = sim.stats(brief=True)
    print_table(rows)
    print(f"\nlast run's server stats: {stats['by_status']} peak_in_flight={stats['peak_in_flight']}")
    best = max(row["req/s"] for row in rows)
    print(f"best: {best:,.0f} req/s (goal >= 2,000): {'met' if best >= 2000 else 'NOT met'}")


if __name__ == "__main__":
    main()
