"""Real faults against a real `manage.py process_job` (or `db_worker`): shared by
tests/test_durability.py (small jobs) and bench/faults.py (large ones).

A ``FaultSite`` is a project database of its own (a SQLite file, or a fresh
database on the PostgreSQL of ``DATABASE_URL``) plus `manage.py` in
subprocesses talking to the simulator. Each ``scenario_*`` function injects one
fault into a running job, lets the surface stop or recover, re-runs the job
when the surface had to stop, and returns a ``Row``: counts per status, items
left running, prompts paid more than once (from the simulator's per-prompt
counts), and the allowance (calls in flight + 0.5 s of throughput).

Nothing here asserts on wall-clock time: waits are bounded loops over the
database's state, and the rows report wall time only for people to read.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import dbtemplate

ROOT = Path(__file__).resolve().parent.parent


def postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else None


@dataclass
class Row:
    fault: str
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    running: int = 0
    paid_twice: int = 0
    allowance: int = 0
    wall: float = 0.0
    lines: list[str] = field(default_factory=list)  # what the surface said when it could not go on
    returncodes: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.items - self.succeeded - self.failed - self.cancelled - self.pending - self.running


class FaultSite:
    """A database of its own plus `manage.py` in subprocesses (settings: tests.fault_settings)."""

    def __init__(self, tmp: Path, sim: Any, **env: str) -> None:
        self.tmp = tmp
        self.sim = sim
        self.env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
        base = postgres_url()
        if base:
            self.db_name: str | None = f"llmjobs_fault_{uuid.uuid4().hex[:8]}"
            self.pg_base = base
            self.db_url = base.rsplit("/", 1)[0] + "/" + self.db_name
            self.sqlite_path: Path | None = None
        else:
            self.db_name = None
            self.sqlite_path = tmp / "db.sqlite3"
            self.db_url = f"sqlite:///{self.sqlite_path}"
        self.env.update(
            DATABASE_URL=self.db_url,
            DJANGO_SETTINGS_MODULE="tests.fault_settings",
            LLMJOBS_SIMULATOR_URL=sim.base_url,
            PYTHONUNBUFFERED="1",
            LLMJOBS_LEASE_SECONDS="4",  # a dead runner's items come back sooner
        )
        self.env.setdefault("SECRET_KEY", "fault-tests-only-secret")
        self.env.update(env)
        # A copy of a database migrated once per process (tests/dbtemplate.py), not a migrate per site.
        if self.sqlite_path is None:
            assert base and self.db_name
            dbtemplate.postgres_database(base, self.db_name, self.env)
        else:
            dbtemplate.sqlite_database(self.sqlite_path, self.env)
        self._logs = 0

    # -- plumbing ------------------------------------------------------------------
    def _pg_admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.pg_base, autocommit=True) as conn:
            conn.execute(sql)

    def close(self) -> None:
        if self.db_name:
            self._pg_admin(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")

    def manage(self, *args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        """`manage.py` in the background; its output goes to files (never a full pipe)."""
        self._logs += 1
        out = open(self.tmp / f"out{self._logs}.txt", "w+")
        err = open(self.tmp / f"err{self._logs}.txt", "w+")
        proc = subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=err, text=True
        )
        proc.logs = (out, err)  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
        """Wait for ``proc``; its exit status, stdout and stderr."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the process did not stop") from None
        texts = []
        for f in proc.logs:  # type: ignore[attr-defined]
            f.seek(0)
            texts.append(f.read())
            f.close()
        return proc.returncode, texts[0], texts[1]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.sqlite_path is not None:
            conn = sqlite3.connect(self.sqlite_path, timeout=30)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def submit(self, n: int, *extra: str) -> int:
        docs = self.tmp / f"docs{n}_{uuid.uuid4().hex[:6]}.txt"
        docs.write_text("".join(f"Doc {i:05d} says hello to the world number {i}\n" for i in range(n)))
        out = self.manage("submit_job", str(docs), "--template", "Summarize: {text}", "--max-tokens", "32", *extra)
        return int(out.stdout.strip().splitlines()[0])

    def counts(self, job_id: int) -> dict[str, int]:
        rows = self.query("SELECT status, COUNT(*) FROM llmjobs_item WHERE job_id = ? GROUP BY status", (job_id,))
        return {status: n for status, n in rows}

    def job_status(self, job_id: int) -> tuple[str, str]:
        [(status, error)] = self.query("SELECT status, last_error FROM llmjobs_batchjob WHERE id = ?", (job_id,))
        return status, error

    def wait_for(self, what: Callable[[], bool], proc: subprocess.Popen | None = None, polls: int = 1200) -> None:
        """Poll ``what`` (at most ~``polls``/10 s); stop early if ``proc`` exited."""
        for _ in range(polls):
            if what():
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the process exited early ({proc.returncode})")
            time.sleep(0.1)
        raise AssertionError("timed out waiting for the job to get there")

    def wait_succeeded(self, job_id: int, at_least: int, proc: subprocess.Popen | None = None) -> None:
        self.wait_for(lambda: self.counts(job_id).get("succeeded", 0) >= at_least, proc)

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code).stdout

    def cancel(self, job_id: int) -> None:
        self.shell(
            f"from llmjobs.jobs import job_cancel; from llmjobs.models import BatchJob; "
            f"job_cancel(job=BatchJob.objects.get(pk={job_id}))"
        )

    def hold_sqlite_lock(self, release: threading.Event) -> threading.Thread:
        """A second connection holds the write lock (``BEGIN IMMEDIATE``) until ``release`` is set."""
        assert self.sqlite_path is not None
        held = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                held.set()
                release.wait(600)
                conn.execute("COMMIT")
            finally:
                conn.close()

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        held.wait(30)
        return thread

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` on every other connection to the site's database."""
        import psycopg

        with psycopg.connect(self.pg_base, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.db_name,),
            ).fetchall()
        return len(rows)

    def paid_twice(self) -> int:
        return int(self.sim.stats(brief=True)["prompts"]["paid_more_than_once"])

    def row(self, fault: str, job_id: int, *, started: float, allowance: int, **extra: Any) -> Row:
        c = self.counts(job_id)
        return Row(
            fault=fault,
            items=sum(c.values()),
            succeeded=c.get("succeeded", 0),
            failed=c.get("failed", 0),
            cancelled=c.get("cancelled", 0),
            pending=c.get("pending", 0),
            running=c.get("running", 0),
            paid_twice=self.paid_twice(),
            allowance=allowance,
            wall=time.monotonic() - started,
            extra=extra,
        )


# --- scenarios ------------------------------------------------------------------------


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _paid(site: FaultSite) -> int:
    return sum(e["paid"] for e in site.sim.stats()["prompt_counts"].values())


def _throughput(site: FaultSite, job_id: int, window: float = 0.5) -> float:
    """Answers/s right now (the allowance's 0.5 s of answers): the higher of what the
    API answered (the simulator's paid count) and what the database stored in the
    window. On a loaded machine the writer stores in bursts, so the database alone
    can show 0 items/s while answers keep arriving."""
    stored, paid = site.counts(job_id).get("succeeded", 0), _paid(site)
    time.sleep(window)
    stored_rate = (site.counts(job_id).get("succeeded", 0) - stored) / window
    return max(stored_rate, (_paid(site) - paid) / window)


def _allowance(concurrency: int, rate: float) -> int:
    return concurrency + int(rate * 0.5 + 0.999)


def _rerun(site: FaultSite, row: Row, job_id: int) -> None:
    result = site.manage("process_job", str(job_id), "--no-progress", check=False)
    row.returncodes.append(result.returncode)
    if result.returncode != 0:
        row.lines.append("re-run: " + _last_line(result.stderr))


def scenario_sqlite_lock(site: FaultSite, *, n: int, concurrency: int, hold: float, ttft: float = 0.02) -> Row:
    """A second connection holds SQLite's write lock for ``hold`` seconds mid-run."""
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress")
    site.wait_succeeded(job_id, max(n // 10, 1), proc)
    release = threading.Event()
    thread = site.hold_sqlite_lock(release)
    time.sleep(hold)  # the fault's length, not an assertion
    release.set()
    thread.join()
    code, out, err = site.finish(proc)
    row = site.row(f"SQLite write lock held {hold:g} s", job_id, started=started, allowance=concurrency)
    row.returncodes.append(code)
    row.lines.append(_last_line(out if code == 0 else err))
    return row


def scenario_db_gives_up(site: FaultSite, *, n: int, concurrency: int, limit: float, ttft: float = 0.02) -> Row:
    """The database stays locked past LLMJOBS_DB_OUTAGE_SECONDS: a non-zero exit with one
    line, then (lock released) a re-run completes the job."""
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress", LLMJOBS_DB_OUTAGE_SECONDS=f"{limit:g}")
    site.wait_succeeded(job_id, max(n // 10, 1), proc)
    rate = _throughput(site, job_id)
    release = threading.Event()
    thread = site.hold_sqlite_lock(release)
    code, _out, err = site.finish(proc)  # it gives up while the lock is held
    release.set()
    thread.join()
    row = Row(fault=f"SQLite locked past LLMJOBS_DB_OUTAGE_SECONDS={limit:g}")
    row.returncodes.append(code)
    row.lines.append(_last_line(err))
    _rerun(site, row, job_id)
    # The calls in flight when the lock began, and those dispatched before the runner saw the
    # stall (STALL_SECONDS) and held new calls back: twice the calls in flight, plus 0.5 s.
    final = site.row(row.fault, job_id, started=started, allowance=_allowance(2 * concurrency, rate))
    final.returncodes, final.lines = row.returncodes, row.lines
    return final


def scenario_pg_terminate(site: FaultSite, *, n: int, concurrency: int, times: int = 3, ttft: float = 0.02) -> Row:
    """``pg_terminate_backend`` on the runner's connections, ``times`` times mid-run."""
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress")
    terminated = 0
    for k in range(1, times + 1):
        site.wait_succeeded(job_id, n * k // (times + 2), proc)
        terminated += site.terminate_backends()
    code, out, err = site.finish(proc)
    row = site.row(f"PostgreSQL backends terminated x{times}", job_id, started=started, allowance=concurrency)
    row.returncodes.append(code)
    row.lines.append(_last_line(out if code == 0 else err))
    row.extra["terminated"] = terminated
    if code != 0:
        _rerun(site, row, job_id)
        row = _refresh(site, row, job_id, started)
    return row


def _refresh(site: FaultSite, row: Row, job_id: int, started: float) -> Row:
    final = site.row(row.fault, job_id, started=started, allowance=row.allowance, **row.extra)
    final.returncodes, final.lines = row.returncodes, row.lines
    return final


def scenario_kill(
    site: FaultSite, *, n: int, concurrency: int, sig: int, ttft: float = 0.05, twice: bool = False
) -> Row:
    """``sig`` (SIGKILL, SIGTERM or SIGINT; ``twice``: sent twice) to a running
    `process_job`, then a re-run. Returns the row after the re-run; ``extra``
    holds the counts and exit status right after the signal."""
    name = signal.Signals(sig).name + (" twice" if twice else "")
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress")
    site.wait_succeeded(job_id, max(n // 5, 1), proc)
    rate = _throughput(site, job_id)
    proc.send_signal(sig)
    if twice:
        time.sleep(0.05)
        proc.send_signal(sig)
    code, _out, err = site.finish(proc)
    after = site.counts(job_id)
    paid = _paid(site)
    row = Row(fault=f"{name} to process_job at {rate:.0f} items/s")
    row.returncodes.append(code)
    if sig != signal.SIGKILL:
        row.lines.append(_last_line(err))
    extra = {"after_signal": after, "paid_before_rerun": paid, "job_after_signal": site.job_status(job_id)}
    row.extra = extra
    _rerun(site, row, job_id)
    final = site.row(row.fault, job_id, started=started, allowance=_allowance(concurrency, rate), **extra)
    final.returncodes, final.lines = row.returncodes, row.lines
    return final


def scenario_cancel_after_death(site: FaultSite, *, n: int, concurrency: int, ttft: float = 0.2) -> Row:
    """kill -9, then cancel: pending and expired-lease items are cancelled at once; the
    dead runner's still-live leases are cancelled when they expire (cancel again, or
    ``recover_jobs``)."""
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress")
    site.wait_succeeded(job_id, max(n // 10, 1), proc)
    proc.send_signal(signal.SIGKILL)
    site.finish(proc)
    site.cancel(job_id)
    right_after = site.counts(job_id)
    # The dead runner's leases (LLMJOBS_LEASE_SECONDS=4) expire; the next sweep cancels them.
    site.wait_for(
        lambda: (
            not site.query(
                "SELECT 1 FROM llmjobs_item WHERE job_id = ? AND status = 'running' AND lease_expires_at >= ?",
                (job_id, _db_now(site)),
            )
        )
    )
    out = site.manage("recover_jobs").stdout
    row = site.row("cancel after the runner died", job_id, started=started, allowance=concurrency)
    row.extra = {"right_after_cancel": right_after, "status": site.job_status(job_id)}
    row.lines.append(_last_line(out))
    return row


def _db_now(site: FaultSite) -> str:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    if site.sqlite_path is not None:
        return now.strftime("%Y-%m-%d %H:%M:%S.%f")
    return now.isoformat()


def scenario_api_outage(site: FaultSite, *, n: int, concurrency: int, seconds: float, mode: str = "close") -> Row:
    """The API unreachable for ``seconds`` mid-run (the simulator's outage), then back."""
    site.sim.configure(ttft=0.02)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    started = time.monotonic()
    proc = site.popen("process_job", str(job_id), "--no-progress")
    site.wait_succeeded(job_id, max(n // 10, 1), proc)
    site.sim.outage(seconds, mode)
    code, out, err = site.finish(proc)
    row = site.row(f"API unreachable {seconds:g} s ({mode})", job_id, started=started, allowance=concurrency)
    row.returncodes.append(code)
    row.lines.append(_last_line(out if code == 0 else err))
    return row


def scenario_worker_sigterm(site: FaultSite, *, n: int, concurrency: int, ttft: float = 0.2) -> Row:
    """SIGTERM to a `db_worker` running the job: it drains and exits without waiting
    for the whole job; the job is interrupted (resumable); a re-run completes it."""
    site.sim.configure(ttft=ttft)
    job_id = site.submit(n, "--concurrency", str(concurrency))
    site.shell(
        f"from llmjobs.jobs import job_enqueue; from llmjobs.models import BatchJob; "
        f"job_enqueue(job=BatchJob.objects.get(pk={job_id}))"
    )
    started = time.monotonic()
    proc = site.popen("db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.1")
    site.wait_succeeded(job_id, max(n // 10, 1), proc)
    rate = _throughput(site, job_id)
    proc.send_signal(signal.SIGTERM)
    code, _out, _err = site.finish(proc)
    after = site.counts(job_id)
    status = site.job_status(job_id)
    paid = _paid(site)
    row = Row(fault="SIGTERM to db_worker")
    row.returncodes.append(code)
    row.lines.append(status[1])
    _rerun(site, row, job_id)
    final = site.row(
        row.fault,
        job_id,
        started=started,
        allowance=_allowance(concurrency, rate),
        after_signal=after,
        job_after_signal=status,
        paid_before_rerun=paid,
    )
    final.returncodes, final.lines = row.returncodes, row.lines
    return final


def scenario_api_faults(site: FaultSite, *, n: int, concurrency: int, max_tokens: int = 32, **rates: float) -> Row:
    """Random API faults (``cut_stream``, ``bad_json``, ``fail_should_retry_false``...).
    A ``max_tokens`` above the SDK's non-streaming limit makes every call a stream."""
    site.sim.configure(ttft=0.01, **rates)
    job_id = site.submit(n, "--concurrency", str(concurrency), "--max-tokens", str(max_tokens))
    started = time.monotonic()
    result = site.manage("process_job", str(job_id), "--no-progress", check=False)
    label = ", ".join(f"{k}={v:g}" for k, v in rates.items())
    row = site.row(f"API faults {label}", job_id, started=started, allowance=0)
    row.returncodes.append(result.returncode)
    row.lines.append(_last_line(result.stdout if result.returncode == 0 else result.stderr))
    errors = site.query(
        "SELECT error_type, COUNT(*) FROM llmjobs_item WHERE job_id = ? AND status = 'failed' GROUP BY error_type",
        (job_id,),
    )
    row.extra["failed_by_type"] = dict(errors)
    site.sim.configure(**dict.fromkeys(rates, 0.0))
    return row


def scenario_unrenderable(site: FaultSite, *, n: int) -> Row:
    """An item whose prompt can't be rendered (its data lost the placeholder's field):
    it fails with the reason, the job goes on."""
    site.sim.configure(ttft=0.0)
    docs = site.tmp / "rows.jsonl"
    docs.write_text("".join(json.dumps({"name": f"n{i}", "text": f"t{i}"}) + "\n" for i in range(n)))
    out = site.manage("submit_job", str(docs), "--template", "Hello {name}: {text}", "--max-tokens", "16")
    job_id = int(out.stdout.strip().splitlines()[0])
    site.shell(
        "from llmjobs.models import Item; "
        f"Item.objects.filter(job_id={job_id}, position=1).update(input={{'text': 'no name'}})"
    )
    started = time.monotonic()
    result = site.manage("process_job", str(job_id), "--no-progress", check=False)
    row = site.row("an item whose prompt can't be rendered", job_id, started=started, allowance=0)
    row.returncodes.append(result.returncode)
    row.lines.append(_last_line(result.stdout if result.returncode == 0 else result.stderr))
    [(etype, message)] = site.query(
        "SELECT error_type, error_message FROM llmjobs_item WHERE job_id = ? AND position = 1", (job_id,)
    )
    row.extra["item_error"] = f"{etype}: {message}"
    return row


def scenario_no_progress(site: FaultSite, *, n: int) -> Row:
    site.sim.configure(ttft=0.0)
    job_id = site.submit(n)
    started = time.monotonic()
    result = site.manage("process_job", str(job_id), "--no-progress", check=False)
    row = site.row("process_job --no-progress", job_id, started=started, allowance=0)
    row.returncodes.append(result.returncode)
    row.lines.append(_last_line(result.stdout if result.returncode == 0 else result.stderr))
    return row
