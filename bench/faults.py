"""Benchmark: each fault of issue 11's table against a real `manage.py process_job`
(or `db_worker`), a real database and the simulator. Prints one table:

  fault | items | succeeded | failed | cancelled | left running | paid twice | allowance | wall s

"paid twice" is the number of prompts the simulator billed more than once
(its per-prompt counts); "allowance" is what a fault may cost: the calls in
flight (the job's concurrency) plus 0.5 s of throughput; for injected API
faults ("faults") each cut stream or broken body was a billed answer that has
to be asked again, so it is paid twice by design. Rows that make a
surface stop are re-run, and the row shows the state after the re-run; what
the surface said when it stopped is listed under the table. Runs on SQLite
(a file per row); PostgreSQL rows run with --pg-url (pg_terminate_backend).

Usage: .venv/bin/python bench/faults.py [--n 3000] [--pg-url postgres://postgres@127.0.0.1:5432/NAME] [--only WORD]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmjobs.simulator.server import SimulatorProcess  # noqa: E402
from tests import fault_site as fs  # noqa: E402
from tests.conftest import SIM_DEFAULTS  # noqa: E402

COLUMNS = ["fault", "items", "succeeded", "failed", "cancelled", "left running", "paid twice", "allowance", "wall s"]


def scenarios(n: int, pg: bool) -> list[tuple[str, Callable[[fs.FaultSite], fs.Row], dict[str, str]]]:
    """(name, run, extra env) for each row."""
    rows: list[tuple[str, Callable[[fs.FaultSite], fs.Row], dict[str, str]]] = [
        (
            "sqlite-lock",
            lambda s: fs.scenario_sqlite_lock(s, n=n, concurrency=50, hold=35, ttft=0.1),
            {"LLMJOBS_TEST_SQLITE_TIMEOUT": "20"},  # the project's own busy timeout
        ),
        (
            "db-gives-up",
            lambda s: fs.scenario_db_gives_up(s, n=n, concurrency=50, limit=10, ttft=0.1),
            {"LLMJOBS_TEST_SQLITE_TIMEOUT": "2"},
        ),
        ("kill9", lambda s: fs.scenario_kill(s, n=2 * n, concurrency=100, sig=signal.SIGKILL, ttft=0.1), {}),
        ("cancel-dead", lambda s: fs.scenario_cancel_after_death(s, n=n, concurrency=50, ttft=0.2), {}),
        ("api-outage", lambda s: fs.scenario_api_outage(s, n=n, concurrency=50, seconds=20), {}),
        ("sigint", lambda s: fs.scenario_kill(s, n=n, concurrency=50, sig=signal.SIGINT, ttft=0.5), {}),
        ("sigterm", lambda s: fs.scenario_kill(s, n=n, concurrency=50, sig=signal.SIGTERM, ttft=0.5), {}),
        (
            "sigterm-twice",
            lambda s: fs.scenario_kill(s, n=n, concurrency=50, sig=signal.SIGTERM, ttft=0.5, twice=True),
            {},
        ),
        ("worker-sigterm", lambda s: fs.scenario_worker_sigterm(s, n=n, concurrency=50, ttft=0.5), {}),
        (
            "cut-stream",
            lambda s: fs.scenario_api_faults(s, n=n, concurrency=50, max_tokens=30000, cut_stream=0.05),
            {},
        ),
        ("bad-json", lambda s: fs.scenario_api_faults(s, n=n, concurrency=50, bad_json=0.05), {}),
        (
            "should-retry-false",
            lambda s: fs.scenario_api_faults(s, n=n, concurrency=50, fail_should_retry_false=0.02),
            {},
        ),
        ("unrenderable", lambda s: fs.scenario_unrenderable(s, n=100), {}),
        ("no-progress", lambda s: fs.scenario_no_progress(s, n=100), {}),
    ]
    if pg:
        rows.insert(
            2, ("pg-terminate", lambda s: fs.scenario_pg_terminate(s, n=n, concurrency=50, times=5, ttft=0.1), {})
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="items per job (kill -9 runs twice as many)")
    parser.add_argument("--pg-url", default="", help="a PostgreSQL database to create row databases from")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this")
    args = parser.parse_args()

    table: list[list[str]] = []
    said: list[str] = []
    with SimulatorProcess() as sim, tempfile.TemporaryDirectory() as tmp:
        for name, run, env in scenarios(args.n, bool(args.pg_url)):
            if args.only and args.only not in name:
                continue
            sim.reset()
            sim.configure(**SIM_DEFAULTS)
            saved = os.environ.get("DATABASE_URL")
            if name.startswith("pg-"):
                os.environ["DATABASE_URL"] = args.pg_url
            else:
                os.environ.pop("DATABASE_URL", None)
            row_dir = Path(tmp) / name
            row_dir.mkdir()
            site = fs.FaultSite(row_dir, sim, **env)
            try:
                row = run(site)
            except Exception as exc:  # a row that breaks is reported, the others still run
                table.append([name, "error", "", "", "", "", "", "", ""])
                said.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            finally:
                site.close()
                if saved is None:
                    os.environ.pop("DATABASE_URL", None)
                else:
                    os.environ["DATABASE_URL"] = saved
            table.append(
                [
                    row.fault,
                    str(row.items),
                    str(row.succeeded),
                    str(row.failed),
                    str(row.cancelled),
                    str(row.running),
                    str(row.paid_twice),
                    str(row.allowance) if not name.startswith(("cut-", "bad-", "should-")) else "faults",
                    f"{row.wall:.1f}",
                ]
            )
            notes = [line for line in row.lines if line]
            if row.pending:
                notes.append(f"{row.pending} item(s) still pending")
            if row.lost:
                notes.append(f"{row.lost} item(s) LOST")
            if row.extra.get("failed_by_type"):
                notes.append(f"failed: {row.extra['failed_by_type']}")
            if "item_error" in row.extra:
                notes.append(f"item: {row.extra['item_error']}")
            said.append(f"{row.fault} (exit {row.returncodes}): " + " | ".join(notes))
            print(f"done: {row.fault} in {row.wall:.1f} s", file=sys.stderr, flush=True)
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in table)) for i in range(len(COLUMNS))]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print()
    print("What each surface said (exit statuses: the faulted run, then the re-run if any):")
    for s in said:
        print(f"- {s}")
    print(f"\n(machine: {os.cpu_count()} cores shared with other work; wall times are noisy)")


if __name__ == "__main__":
    main()
