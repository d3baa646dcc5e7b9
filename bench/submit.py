"""Benchmark: seconds to submit 100,000 items with ``manage.py submit_job FILE`` (issue 17, part 2).

Each row is a fresh ``manage.py submit_job`` process (parse, validate, one transaction:
COPY on PostgreSQL, batched ``executemany`` INSERTs on SQLite), on a freshly migrated
database, timed from the outside. "start-up" is the same command with a 1-item file;
"per 100k" is (wall - start-up) scaled to 100,000 items.

PostgreSQL: ``--pg postgres://user@host:port/any`` (default: $LLMJOBS_BENCH_PG_URL, else
postgres://postgres@127.0.0.1:5432/postgres); a database of its own is created and dropped.

"submit_job --run" (``--run-n`` items, default 20,000, 0 to skip; and ``--n`` items, stopped with SIGINT
once the first call is out) submits and runs a job against
the simulator (instant answers) in one fresh process: "first call" is the time from launching
the process to the first item's claim (``min(started_at)``: the first call is dispatched right
after), "wall" the whole command. The engine may start once the first batch of items is
committed, while the rest is inserted (``jobs.job_create(start=...)``).

Usage: .venv/bin/python bench/submit.py [--n 100000] [--run-n 20000] [--pg URL | --no-pg] [--pg-db NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import record  # noqa: E402


def write_file(path: Path, n: int) -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "cat", "watches"]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(f"Doc {i:06d}: " + " ".join(words[(i + k) % len(words)] for k in range(10 + i % 60)) + "\n")


def env_for(db_url: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=db_url, DJANGO_SETTINGS_MODULE="project.settings", LOG_LEVEL="WARNING")
    env.setdefault("SECRET_KEY", "bench-only-secret")
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def submit(db_url: str, path: Path) -> float:
    cmd = [sys.executable, "manage.py", "submit_job", str(path), "--template", "Summarize: {text}", "--no-estimate"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env_for(db_url), check=True, capture_output=True)
    return time.perf_counter() - t0


def first_claim(db_url: str, job_id: int) -> float:
    """Epoch seconds of the job's first claim (``min(started_at)`` of its items)."""
    sql = "SELECT MIN(started_at) FROM llmjobs_item WHERE job_id = %s"
    if db_url.startswith("sqlite"):
        with sqlite3.connect(urlsplit(db_url).path) as conn:
            (value,) = conn.execute(sql.replace("%s", "?"), (job_id,)).fetchone()
        when = datetime.datetime.fromisoformat(value)
        return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, (job_id,)).fetchone()
    assert row is not None
    return float(row[0].timestamp())


def submit_and_run(db_url: str, path: Path, sim_url: str) -> tuple[float, float]:
    """``submit_job FILE --run`` against the simulator: (seconds to the first claim, wall)."""
    cmd = [sys.executable, "manage.py", "submit_job", str(path), "--template", "Summarize: {text}"]
    cmd += ["--no-estimate", "--max-tokens", "16", "--run"]
    env = dict(env_for(db_url), LLMJOBS_SIMULATOR_URL=sim_url)
    start, t0 = time.time(), time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    job_id = int(out.stdout.split()[0])
    assert "succeeded" in out.stdout, out.stdout
    return first_claim(db_url, job_id) - start, wall


INSERT_METHODS = """
import json, sys, time
import django
django.setup()
from django.db import connection, transaction
from llmjobs.filling import insert_items
from llmjobs.models import BatchJob, Item
n = int(sys.argv[1])
words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "cat", "watches"]
rows = [({"text": f"Doc {i:06d}: " + " ".join(words[(i + k) % 13] for k in range(10 + i % 60))}, "") for i in range(n)]
def bulk_create(job_id):
    objs = [Item(job_id=job_id, position=i, input=f, custom_id=c) for i, (f, c) in enumerate(rows)]
    Item.objects.bulk_create(objs, batch_size=2000)
methods = {"bulk_create": bulk_create, "executemany": lambda job_id: insert_items(job_id, rows, copy=False)}
if connection.vendor == "postgresql":
    methods["COPY"] = lambda job_id: insert_items(job_id, rows)
out = {}
for label, insert in methods.items():
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with transaction.atomic():
            insert(BatchJob.objects.create(name="bench", model="m", total=n).pk)
        times.append(time.perf_counter() - t0)
    out[label] = min(times)
# Seconds from job_create's call (parse + validate included) to start(job): inside a transaction
# every row is inserted first (the old way), outside only the first batch (issue 17, start early).
from llmjobs.jobs import job_create
texts = [fields["text"] for fields, _ in rows]
for label in ("start after all rows", "start after first batch"):
    seen = []
    mark = lambda job: seen.append(time.perf_counter())
    t0 = time.perf_counter()
    if label == "start after all rows":
        with transaction.atomic():
            job_create(name="b", template="S: {text}", model="m", texts=texts, start=mark)
    else:
        job_create(name="b", template="S: {text}", model="m", texts=texts, start=mark)
    out[label] = seen[0] - t0
    out[label + ", returned"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def insert_methods(db_url: str, n: int) -> dict[str, float]:
    """Seconds to insert ``n`` ready rows in one transaction, by method (best of 2, one process)."""
    cmd = [sys.executable, "-c", INSERT_METHODS, str(n)]
    out = subprocess.run(cmd, cwd=ROOT, env=env_for(db_url), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_call_only(db_url: str, path: Path, sim_url: str) -> float:
    """``submit_job FILE --run``: seconds from launch to the first claim; then SIGINT (clean stop)."""
    cmd = [sys.executable, "manage.py", "submit_job", str(path), "--template", "Summarize: {text}"]
    cmd += ["--no-estimate", "--max-tokens", "16", "--run"]
    env = dict(env_for(db_url), LLMJOBS_SIMULATOR_URL=sim_url, PYTHONUNBUFFERED="1")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        job_id = int(proc.stdout.readline().split()[0])
        for _ in range(6000):  # bounded: ~5 min
            try:
                return first_claim(db_url, job_id) - start
            except (TypeError, ValueError, AttributeError, sqlite3.OperationalError):  # no claim yet (NULL)
                time.sleep(0.05)
        raise RuntimeError("no call was ever dispatched")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def measure(
    label: str, db_url: str, big: Path, one: Path, n: int, run: tuple[Path, int, str] | None, methods: bool = True
) -> dict:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--noinput"], cwd=ROOT, env=env_for(db_url), check=True
    )
    startup = min(submit(db_url, one) for _ in range(2))
    wall = submit(db_url, big)
    per_100k = max(wall - startup, 0.0) * 100_000 / n
    row: dict = {"db": label, "n": n, "wall": wall, "startup": startup, "per_100k": per_100k}
    row["methods"] = insert_methods(db_url, n) if methods else {}
    if run is not None:
        path, run_n, sim_url = run
        row["run_n"] = run_n
        row["first_call"], row["run_wall"] = submit_and_run(db_url, path, sim_url)
        row["first_call_big"] = first_call_only(db_url, big, sim_url)
    return row


def pg_database(admin_url: str, name: str, *, drop: bool = False) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument(
        "--pg", default=os.environ.get("LLMJOBS_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--pg-db", default=f"llmjobs_bench_submit_{os.getpid()}", help="created, then dropped")
    parser.add_argument("--no-methods", action="store_true", help="skip bulk_create/executemany/COPY")
    parser.add_argument("--run-n", type=int, default=20_000, help="items for submit_job --run (0: skip)")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        big, one, small = Path(tmp, "items.txt"), Path(tmp, "one.txt"), Path(tmp, "run.txt")
        write_file(big, opts.n)
        write_file(one, 1)
        run = None
        if opts.run_n:
            from llmjobs.simulator.server import SimulatorProcess

            write_file(small, opts.run_n)
            sim = stack.enter_context(SimulatorProcess())
            sim.configure(rpm=0, itpm=0, otpm=0, capacity=0, ttft=0.0, tps=0.0, fail_529=0.0, fail_500=0.0)
            run = (small, opts.run_n, sim.base_url)
        rows.append(measure("SQLite", f"sqlite:///{tmp}/submit.sqlite3", big, one, opts.n, run, not opts.no_methods))
        if not opts.no_pg:
            name = opts.pg_db
            try:
                url = pg_database(opts.pg, name)
            except Exception as exc:  # no PostgreSQL here: say so, measure SQLite only
                print(f"PostgreSQL skipped: {type(exc).__name__}: {' '.join(str(exc).split())}")
            else:
                try:
                    rows.append(measure("PostgreSQL", url, big, one, opts.n, run, not opts.no_methods))
                finally:
                    pg_database(opts.pg, name, drop=True)
    print()
    print(f"manage.py submit_job FILE ({opts.n:,} items, TXT, --no-estimate), one fresh process each")
    print("| database | items | wall s | start-up s (1 item) | s per 100k items (wall - start-up) | items/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rate = r["n"] / max(r["wall"] - r["startup"], 1e-9)
        print(f"| {r['db']} | {r['n']:,} | {r['wall']:.2f} | {r['startup']:.2f} | {r['per_100k']:.2f} | {rate:,.0f} |")
        record(
            "submit",
            f"submit_job, s per 100k items, {r['db']}",
            r["per_100k"],
            "s",
            reference=f"start-up {r['startup']:.2f} s excluded",
        )
    print("(issue 17 asks for the number; no goal)")
    print()
    print(f"Inserting {opts.n:,} ready rows in one transaction, in one process (s per 100k items, best of 2)")
    print("| database | bulk_create | executemany | COPY |")
    print("|---|---|---|---|")
    for r in rows if not opts.no_methods else []:
        per = {k: v * 100_000 / r["n"] for k, v in r["methods"].items()}
        copy = f"{per['COPY']:.2f}" if "COPY" in per else "-"
        print(f"| {r['db']} | {per['bulk_create']:.2f} | {per['executemany']:.2f} | {copy} |")
    print()
    print(f"jobs.job_create({opts.n:,} texts, start=...) in one process: s from the call to start(job) / to its return")
    print("| database | start after all rows (old) | start after the first batch (start early) |")
    print("|---|---|---|")
    for r in rows if not opts.no_methods else []:
        m = r["methods"]
        old, new = "start after all rows", "start after first batch"
        print(
            f"| {r['db']} | {m[old]:.2f} / {m[old + ', returned']:.2f} | {m[new]:.2f} / {m[new + ', returned']:.2f} |"
        )
        record(
            "submit", f"job_create to start(job), s, {r['db']}", m[new], "s", reference=f"all rows first {m[old]:.2f} s"
        )
    if opts.run_n:
        print()
        print(f"manage.py submit_job FILE --run ({opts.run_n:,} items, instant simulator), one fresh process")
        print("| database | items | first call s (from launch) | wall s |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['db']} | {r['run_n']:,} | {r['first_call']:.2f} | {r['run_wall']:.2f} |")
        for r in rows:
            print(f"| {r['db']} | {r['n']:,} | {r['first_call_big']:.2f} | (stopped with SIGINT) |")
            record("submit", f"submit_job --run, s to first call, {r['db']}", r["first_call"], "s")


if __name__ == "__main__":
    main()
