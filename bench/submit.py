"""Benchmark: seconds to submit 100,000 items with ``manage.py submit_job FILE`` (issue 17, part 2).

Each row is a fresh ``manage.py submit_job`` process (parse, validate, one transaction:
COPY on PostgreSQL, batched ``executemany`` INSERTs on SQLite), on a freshly migrated
database, timed from the outside. "start-up" is the same command with a 1-item file;
"per 100k" is (wall - start-up) scaled to 100,000 items.

PostgreSQL: ``--pg postgres://user@host:port/any`` (default: $LLMJOBS_BENCH_PG_URL, else
postgres://postgres@127.0.0.1:5432/postgres); a database of its own is created and dropped.

Usage: .venv/bin/python bench/submit.py [--n 100000] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import os
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


def measure(label: str, db_url: str, big: Path, one: Path, n: int) -> dict:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--noinput"], cwd=ROOT, env=env_for(db_url), check=True
    )
    startup = min(submit(db_url, one) for _ in range(2))
    wall = submit(db_url, big)
    per_100k = max(wall - startup, 0.0) * 100_000 / n
    return {"db": label, "n": n, "wall": wall, "startup": startup, "per_100k": per_100k}


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
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big, one = Path(tmp, "items.txt"), Path(tmp, "one.txt")
        write_file(big, opts.n)
        write_file(one, 1)
        rows.append(measure("SQLite", f"sqlite:///{tmp}/submit.sqlite3", big, one, opts.n))
        if not opts.no_pg:
            name = f"llmjobs_bench_submit_{os.getpid()}"
            try:
                url = pg_database(opts.pg, name)
            except Exception as exc:  # no PostgreSQL here: say so, measure SQLite only
                print(f"PostgreSQL skipped: {type(exc).__name__}: {' '.join(str(exc).split())}")
            else:
                try:
                    rows.append(measure("PostgreSQL", url, big, one, opts.n))
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


if __name__ == "__main__":
    main()
