"""Benchmark: scaling out over real `db_worker` processes on PostgreSQL (issue 12).

Against the simulator, each row on a fresh PostgreSQL database (``tests.fault_site``):

- **share**: one job of 3,000 items (no rate limit, 0.3 s per call, concurrency 50) on
  1, 2 and 3 workers (``LLMJOBS_RUNNERS_PER_JOB`` = workers): wall time (the job's
  ``queued_at`` to ``finished_at``) and items per worker; "spread" is
  (most - fewest) / mean items per worker.
- **takeover**: a kill -9 of the worker running a job (lease 4 s, two workers): seconds
  from the kill until every item the dead worker held is running again on the other
  worker (or done).
- **fairness**: user A's 6,000 items (two jobs of 3,000) run on 1, 2 and 3 workers
  against a 1,200 RPM limit (5 s burst); once they hold the workers, user B submits 50
  items: seconds from B's job queued to finished (goal <= 30 s; first in, first out it
  would wait for A's 6,000 items, about 300 s). A's jobs are cancelled afterwards.

Usage: .venv/bin/python bench/scale.py [--quick] [--pg-url postgres://postgres@127.0.0.1:5432/postgres]
(--quick: 1,000 items for share; fairness on 2 workers only.) Without a reachable
PostgreSQL it says so and records nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import record  # noqa: E402
from llmjobs.simulator.server import SimulatorProcess  # noqa: E402
from tests import fault_site as fs  # noqa: E402
from tests.conftest import SIM_DEFAULTS  # noqa: E402

FAIR_GOAL = 30.0


def new_site(sim: Any, tmp: Path, name: str, **env: str) -> fs.FaultSite:
    (tmp / name).mkdir()
    return fs.FaultSite(tmp / name, sim, **env)


def start_workers(site: fs.FaultSite, count: int) -> list[Any]:
    procs = [site.popen("db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.1") for _ in range(count)]
    deadline = time.monotonic() + 120
    for proc in procs:  # ready when it says so (Django's start-up is not part of any number)
        while "Starting worker" not in Path(proc.logs[1].name).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"db_worker did not start: {Path(proc.logs[1].name).read_text()[-500:]}")
            time.sleep(0.1)
    return procs


def stop_workers(site: fs.FaultSite, procs: list[Any]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        code, _out, err = site.finish(proc)
        if code not in (0, -signal.SIGKILL):
            print(f"warning: a worker exited {code}: {err.strip().splitlines()[-1:]}", file=sys.stderr)


def enqueue(site: fs.FaultSite, pairs: list[tuple[int, str]]) -> None:
    site.shell(
        "from django.contrib.auth import get_user_model; from llmjobs.jobs import job_enqueue; "
        "from llmjobs.models import BatchJob; U = get_user_model(); "
        "[(BatchJob.objects.filter(pk=pk).update(owner=U.objects.get_or_create(username=who)[0]), "
        f"job_enqueue(job=BatchJob.objects.get(pk=pk))) for pk, who in {pairs!r}]"
    )


def job_seconds(site: fs.FaultSite, job_id: int) -> float:
    [(queued, finished)] = site.query("SELECT queued_at, finished_at FROM llmjobs_batchjob WHERE id = ?", (job_id,))
    return float((finished - queued).total_seconds())


def share(sim: Any, tmp: Path, workers: int, n: int) -> dict[str, Any]:
    site = new_site(sim, tmp, f"share{workers}", LLMJOBS_RUNNERS_PER_JOB=str(workers))
    procs: list[Any] = []
    try:
        sim.configure(**{**SIM_DEFAULTS, "ttft": 0.3})
        job_id = site.submit(n, "--concurrency", "50")
        procs = start_workers(site, workers)
        enqueue(site, [(job_id, "alice")])
        site.wait_for(lambda: site.job_status(job_id)[0] == "succeeded", polls=6000)
        per = sorted(
            (
                c
                for _, c in site.query(
                    "SELECT worker_pid, COUNT(*) FROM llmjobs_item WHERE job_id = ? GROUP BY 1", (job_id,)
                )
            ),
            reverse=True,
        )
        wall = job_seconds(site, job_id)
        per += [0] * (workers - len(per))
        spread = (max(per) - min(per)) / (sum(per) / workers)
        return {"wall": wall, "per": per, "spread": spread, "rate": n / wall}
    finally:
        stop_workers(site, procs)
        site.close()


def takeover(sim: Any, tmp: Path) -> dict[str, Any]:
    site = new_site(sim, tmp, "takeover", LLMJOBS_RUNNERS_PER_JOB="1")
    procs: list[Any] = []
    try:
        sim.configure(**{**SIM_DEFAULTS, "ttft": 0.3})
        job_id = site.submit(1500, "--concurrency", "20")
        procs = start_workers(site, 2)
        enqueue(site, [(job_id, "alice")])
        site.wait_succeeded(job_id, 100)
        [(victim_pid,)] = site.query(
            "SELECT worker_pid FROM llmjobs_runnerheartbeat WHERE job_id = ? LIMIT 1", (job_id,)
        )
        victim = next(p for p in procs if p.pid == victim_pid)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait()
        held = [
            pk
            for (pk,) in site.query(
                "SELECT id FROM llmjobs_item WHERE job_id = ? AND status = 'running' AND worker_pid = ?",
                (job_id, victim_pid),
            )
        ]

        def back() -> bool:
            rows = site.query(
                "SELECT COUNT(*) FROM llmjobs_item WHERE id = ANY(?) AND status IN ('running', 'pending') "
                "AND worker_pid = ?",
                (held, victim_pid),
            )
            return rows[0][0] == 0

        site.wait_for(back, polls=3000)
        seconds = time.monotonic() - killed
        site.wait_for(lambda: site.job_status(job_id)[0] == "succeeded", polls=3000)
        return {"seconds": seconds, "held": len(held), "counts": site.counts(job_id)}
    finally:
        stop_workers(site, procs)
        site.close()


def fairness(sim: Any, tmp: Path, workers: int, big: int = 3000, small: int = 50) -> dict[str, Any]:
    site = new_site(sim, tmp, f"fair{workers}", LLMJOBS_RUNNERS_PER_JOB=str(workers))
    procs: list[Any] = []
    try:
        sim.configure(**{**SIM_DEFAULTS, "ttft": 0.3, "rpm": 1200, "burst": 5.0})
        a_jobs = [site.submit(big) for _ in range(2)]
        b_job = site.submit(small)
        procs = start_workers(site, workers)
        enqueue(site, [(pk, "alice") for pk in a_jobs])
        site.wait_for(lambda: sum(site.counts(pk).get("succeeded", 0) for pk in a_jobs) >= 100, polls=3000)
        enqueue(site, [(b_job, "bob")])
        site.wait_for(lambda: site.job_status(b_job)[0] in ("succeeded", "failed"), polls=6000)
        seconds = job_seconds(site, b_job)
        [(queued, began)] = site.query("SELECT queued_at, started_at FROM llmjobs_batchjob WHERE id = ?", (b_job,))
        waited = (began - queued).total_seconds()
        a_left = sum(site.counts(pk).get("pending", 0) + site.counts(pk).get("running", 0) for pk in a_jobs)
        for pk in a_jobs:
            site.cancel(pk)
        stats = sim.stats(brief=True)
        return {
            "seconds": seconds,
            "waited": waited,
            "b": site.counts(b_job),
            "a_left": a_left,
            "429": stats["by_status"].get("429", 0),
        }
    finally:
        stop_workers(site, procs)
        site.close()


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller share job; fairness on 2 workers only")
    parser.add_argument(
        "--pg-url", default=os.environ.get("LLMJOBS_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument(
        "--only", default="", help="run only the rows whose name (share, takeover, fairness) contains this"
    )
    parser.add_argument("--workers", default="1,2,3", help="worker counts for share and fairness (default 1,2,3)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    try:
        import psycopg

        psycopg.connect(args.pg_url, connect_timeout=5).close()
    except Exception as exc:
        print(f"bench/scale.py: skipped, no PostgreSQL at {args.pg_url} ({type(exc).__name__})")
        return
    os.environ["DATABASE_URL"] = args.pg_url  # FaultSite creates a fresh database per row from it
    n = 1000 if args.quick else 3000
    rows: list[list[str]] = []
    started = dt.datetime.now(dt.UTC)
    with SimulatorProcess() as sim, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        walls: dict[int, float] = {}
        for w in counts if args.only in "share" else []:
            sim.reset()
            r = share(sim, tmp, w, n)
            walls[w] = r["wall"]
            per = "/".join(str(c) for c in r["per"])
            rows.append(
                [
                    "share",
                    str(w),
                    f"{n:,} items, no limit",
                    f"{r['wall']:.1f}",
                    f"{r['rate']:.0f} items/s; per worker {per}; spread {r['spread']:.2f}",
                ]
            )
            print(f"done: share on {w} worker(s)", file=sys.stderr, flush=True)
            if w == max(counts) > 1:
                record(
                    "scale",
                    f"share: spread of items over {w} workers",
                    r["spread"],
                    "",
                    goal="<= 0.5",
                    met=r["spread"] <= 0.5,
                )
        if 1 in walls and len(walls) > 1:
            most = max(walls)
            record(
                "scale",
                f"share: {n:,} items wall on {most} workers",
                walls[most],
                "s",
                reference=f"1 worker {walls[1]:.1f} s",
                ratio=walls[most] / walls[1],
            )
        if args.only in "takeover":
            sim.reset()
            t = takeover(sim, tmp)
            rows.append(
                [
                    "takeover",
                    "2",
                    f"kill -9, lease 4 s, {t['held']} items held",
                    f"{t['seconds']:.1f}",
                    f"job ends {t['counts']}",
                ]
            )
            record("scale", "takeover: kill -9 to items running again", t["seconds"], "s", reference="lease 4 s")
            print("done: takeover", file=sys.stderr, flush=True)
        for w in ([2] if args.quick else counts) if args.only in "fairness" else []:
            sim.reset()
            f = fairness(sim, tmp, w)
            rows.append(
                [
                    "fairness",
                    str(w),
                    "B: 50 items behind A's 6,000 at 1,200 RPM",
                    f"{f['seconds']:.1f}",
                    f"B waited {f['waited']:.1f} s for a worker; B {f['b']}; A had {f['a_left']:,} left; "
                    f"{f['429']} 429s",
                ]
            )
            record(
                "scale",
                f"fairness: 50 items behind 6,000 on {w} worker(s)",
                f["seconds"],
                "s",
                reference="goal 30 s",
                ratio=f["seconds"] / FAIR_GOAL,
                goal="<= 30 s",
                met=f["seconds"] <= FAIR_GOAL and f["b"] == {"succeeded": 50},
            )
            print(f"done: fairness on {w} worker(s)", file=sys.stderr, flush=True)
    print(f"scale: db_workers on PostgreSQL, simulator 0.3 s per call (started {started:%H:%M} UTC)")
    print_table(["row", "workers", "what", "seconds", "notes"], rows)
    print(f"\n(machine: {os.cpu_count()} cores shared with other work; wall times are noisy)")


if __name__ == "__main__":
    main()
