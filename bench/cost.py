"""Benchmark: what cost features save (issue 14).

500 items, 100 of them duplicates, a ~3,000-token shared system prompt, on
claude-sonnet-4-5 (minimum cacheable prefix 1,024 tokens), against the simulator.
Rows: online without optimisations; online with caching + dedup; a budget of
30% of row 1's cost; batch with caching + dedup.
Columns: requests sent, input, cache-write, cache-read, output tokens, cost,
cost relative to row 1, the estimate's error (estimate made before the run,
count_tokens only, output at max_tokens), the error of the estimate made after a
5-item Preview (output length observed), wall time.

Goals: caching cuts input cost by >= 80%; dedup sends 400 requests, not 500;
the estimate within +-25%; a 30% budget ends the job at <= 33% of the full cost.

Usage: .venv/bin/python bench/cost.py [--n 500] [--dups 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "claude-sonnet-4-5"
SIM_ARGS = ["--ttft", "0.02", "--tps", "2000", "--answer-tokens", "60"]


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


def texts(n: int, dups: int) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    distinct = [f"Doc {i:04d}: " + " ".join(words[(i + k) % 10] for k in range(20 + i % 40)) for i in range(n - dups)]
    return distinct + [distinct[i * 3 % len(distinct)] for i in range(dups)]


SYSTEM = ("You summarise documents for an archive. Keep names, dates and numbers exact. " * 150).strip()


def run_row(
    sim, label: str, *, n: int, dups: int, cache: bool, dedup: bool, budget: Decimal | None = None, mode: str = "online"
) -> dict:
    from llmjobs import caching
    from llmjobs.estimate import job_estimate
    from llmjobs.jobs import job_create
    from llmjobs.runner import preview_job, process_job

    caching.AUTO_CACHE = cache
    sim.reset()
    job = job_create(
        name=label, template="Summarize: {text}", model=MODEL, system=SYSTEM, max_tokens=120, texts=texts(n, dups)
    )
    job.dedup = dedup
    job.budget_usd = budget
    job.mode = mode
    job.save(update_fields=["dedup", "budget_usd", "mode"])
    estimate = job_estimate(job=job).cost_usd if budget is None else None
    assert sim.stats()["by_status"] == {}, "the estimate made a Messages call"
    started = time.perf_counter()
    previewed = None
    if budget is None and mode == "online":  # Preview 5 items, then estimate again with the observed output length
        preview_job(job.pk, count=5)
        job.refresh_from_db()
        previewed = job_estimate(job=job).cost_usd
    process_job(job.pk)
    wall = time.perf_counter() - started
    job.refresh_from_db()
    stats = sim.stats()
    sent = sum(v for k, v in stats["by_status"].items() if k != "444")
    if mode == "batch":
        sent = stats["batch"]["succeeded"] + stats["batch"].get("errored", 0)
    return {
        "row": label,
        "sent": sent,
        "input": job.input_tokens,
        "cache_write": job.cache_creation_input_tokens,
        "cache_read": job.cache_read_input_tokens,
        "output": job.output_tokens,
        "cost": job.cost_usd,
        "estimate": estimate,
        "previewed": previewed,
        "wall": wall,
        "status": job.last_error or job.status,
        "done": job.succeeded_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dups", type=int, default=100)
    args = parser.parse_args()
    from llmjobs.simulator.server import SimulatorProcess

    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(*SIM_ARGS) as sim:
        setup_django(str(Path(tmp) / "bench.sqlite3"), sim.base_url)
        rows = [
            run_row(sim, "online, no optimisations", n=args.n, dups=args.dups, cache=False, dedup=False),
            run_row(sim, "online, caching + dedup", n=args.n, dups=args.dups, cache=True, dedup=True),
            run_row(sim, "batch, caching + dedup", n=args.n, dups=args.dups, cache=True, dedup=True, mode="batch"),
        ]
        full = rows[0]["cost"]
        rows.append(
            run_row(
                sim,
                "online, no optimisations, budget 30%",
                n=args.n,
                dups=args.dups,
                cache=False,
                dedup=False,
                budget=(full * Decimal("0.3")).quantize(Decimal("0.000001")),
            )
        )
    head = (
        f"{'row':<38} {'sent':>5} {'input':>8} {'c-write':>8} {'c-read':>9} {'output':>7} "
        f"{'cost $':>9} {'x row1':>7} {'est err':>8} {'+preview':>8} {'wall s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        rel = r["cost"] / full if full else Decimal(0)
        err = f"{(r['estimate'] - r['cost']) / r['cost'] * 100:+.1f}%" if r["estimate"] and r["cost"] else "-"
        err2 = f"{(r['previewed'] - r['cost']) / r['cost'] * 100:+.1f}%" if r["previewed"] and r["cost"] else "-"
        print(
            f"{r['row']:<38} {r['sent']:>5} {r['input']:>8} {r['cache_write']:>8} {r['cache_read']:>9} "
            f"{r['output']:>7} {r['cost']:>9.4f} {rel:>7.2f} {err:>8} {err2:>8} {r['wall']:>7.1f}"
        )
    print(f"budget row: {rows[3]['done']} of {args.n} items done; {rows[3]['status']}")
    uncached_input = rows[0]["input"]
    r = rows[1]
    print(
        f"input billed, caching+dedup vs none (input-token equivalents): "
        f"{(r['input'] + r['cache_write'] * 1.25 + r['cache_read'] * 0.1) / uncached_input:.2f}x"
    )


if __name__ == "__main__":
    main()
