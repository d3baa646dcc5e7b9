"""Management commands as users run them: real subprocesses, a real SQLite file
(or the PostgreSQL of DATABASE_URL), the real simulator.

Covers: submit/process/export/status, Ctrl-C in process_job, a process killed
with -9 mid-job and resumed (no succeeded item requested twice), and
enqueue -> db_worker --batch -> succeeded, including recovery of a dead
worker's job.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests import dbtemplate

ROOT = Path(__file__).resolve().parent.parent


class Site:
    """A project database of its own plus `manage.py` in subprocesses."""

    def __init__(self, tmp_path: Path, sim) -> None:
        self.tmp = tmp_path
        self.sim = sim
        self.env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY"}}
        base = os.environ.get("DATABASE_URL", "")
        if base.startswith("postgres"):
            # A database of our own on the same server, dropped at the end.
            self.db_name = f"llmjobs_cmd_{uuid.uuid4().hex[:8]}"
            self.env["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + self.db_name
        else:
            self.db_name = None
            self.env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
        self.env.update(
            DJANGO_SETTINGS_MODULE="project.settings",
            LLMJOBS_SIMULATOR_URL=sim.base_url,
            PYTHONUNBUFFERED="1",
            LLMJOBS_LEASE_SECONDS="4",  # a dead runner's items come back sooner
        )
        # A copy of a database migrated once per process (tests/dbtemplate.py), not a migrate per test.
        if self.db_name:
            dbtemplate.postgres_database(base, self.db_name, self.env)
        else:
            dbtemplate.sqlite_database(tmp_path / "db.sqlite3", self.env)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(sql)

    def close(self) -> None:
        if self.db_name:
            self._admin(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")

    def manage(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def submit(self, n: int, *extra: str) -> int:
        docs = self.tmp / f"docs{n}.txt"
        docs.write_text("".join(f"Doc {i:05d} says hello to the world number {i}\n" for i in range(n)))
        out = self.manage("submit_job", str(docs), "--template", "Summarize: {text}", "--max-tokens", "32", *extra)
        return int(out.stdout.strip().splitlines()[0])

    def export(self, job_id: int) -> list[dict]:
        out = self.manage("export_job", str(job_id), "--format", "jsonl")
        return [json.loads(line) for line in out.stdout.splitlines()]

    def status(self, job_id: int) -> str:
        return self.manage("job_status", str(job_id)).stdout

    def succeeded(self, job_id: int) -> int:
        """Items stored as succeeded, read straight from the database (no `manage.py` start per poll)."""
        sql = "SELECT COUNT(*) FROM llmjobs_item WHERE job_id = %s AND status = 'succeeded'"
        if self.db_name:
            import psycopg

            with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
                [(n,)] = conn.execute(sql, (job_id,)).fetchall()
        else:
            conn = sqlite3.connect(self.tmp / "db.sqlite3", timeout=30)
            try:
                [(n,)] = conn.execute(sql.replace("%s", "?"), (job_id,)).fetchall()
            finally:
                conn.close()
        return int(n)

    def wait_for_successes(self, job_id: int, at_least: int, proc: subprocess.Popen) -> int:
        for _ in range(1200):  # bounded: at most ~2 min
            done = self.succeeded(job_id)
            if done >= at_least or proc.poll() is not None:
                return done
            time.sleep(0.1)
        raise AssertionError("the job never made progress")


@pytest.fixture
def site(tmp_path, sim):
    s = Site(tmp_path, sim)
    yield s
    s.close()


def test_submit_process_export_and_status(site, tmp_path):
    job_id = site.submit(25)
    result = site.manage("process_job", str(job_id))
    assert f"job {job_id}: succeeded - 25 succeeded" in result.stdout
    assert "25/25" in result.stderr  # the tqdm bar
    rows = site.export(job_id)
    assert [r["index"] for r in rows] == list(range(25))
    assert all(r["status"] == "succeeded" and r["text"].startswith(f"Doc {r['index']:05d}") for r in rows)
    out = tmp_path / "out.csv"
    site.manage("export_job", str(job_id), "--format", "csv", "-o", str(out))
    assert out.read_text().count("\n") == 26
    assert "status:    succeeded" in site.status(job_id)


def test_submit_with_run_and_stdin(site):
    result = site.manage("submit_job", "-", "--template", "Summarize: {text}", "--run", input="one\ntwo\n")
    job_id = int(result.stdout.splitlines()[0])
    assert "2 succeeded" in result.stdout
    assert [r["input"]["text"] for r in site.export(job_id)] == ["one", "two"]


@pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="argument checks: the database adds nothing"
)
@pytest.mark.parametrize(
    "args, message",
    [
        (["job_status", "999"], "job 999 does not exist"),
        (["process_job", "999"], "job 999 does not exist"),
        (["export_job", "999"], "job 999 does not exist"),
        (["submit_job", "/nonexistent.txt", "--template", "{text}"], "no such file"),
        (["submit_job", "EMPTY", "--template", "{text}"], "empty"),
        (["submit_job", "DOCS", "--template", "{missing}"], "missing"),
        (["submit_job", "DOCS", "--template", "{text}", "--max-tokens", "0"], "must be 1 or more"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(site, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "docs.txt").write_text("a\nb\n")
    args = [
        str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "docs.txt") if a == "DOCS" else a for a in args
    ]
    result = site.manage(*args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]  # argparse prints its usage first
    assert message in last_line.lower()


def test_ctrl_c_in_process_job_stops_cleanly_and_a_rerun_resumes(site):
    site.sim.configure(ttft=0.5)
    job_id = site.submit(400, "--concurrency", "20")  # ~40 items/s: slow enough to interrupt
    proc = site.popen("process_job", str(job_id))
    site.wait_for_successes(job_id, 20, proc)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    assert "Traceback" not in err
    rows = site.export(job_id)
    statuses = {r["status"] for r in rows}
    assert statuses <= {"succeeded", "pending"}  # nothing left running, nothing lost or failed
    done_before = {r["index"] for r in rows if r["status"] == "succeeded"}
    assert 20 <= len(done_before) < 400
    site.sim.reset()
    site.sim.configure(ttft=0.0)
    site.manage("process_job", str(job_id))
    rows = site.export(job_id)
    assert all(r["status"] == "succeeded" for r in rows)
    assert site.sim.stats()["requests"] == 400 - len(done_before)


def test_kill_9_mid_job_then_resume_never_requests_a_succeeded_item_twice(site):
    site.sim.configure(ttft=0.5)
    job_id = site.submit(400, "--concurrency", "20")  # ~40 items/s: slow enough to kill mid-job
    proc = site.popen("process_job", str(job_id))
    site.wait_for_successes(job_id, 30, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    rows = site.export(job_id)
    recorded = {r["input"]["text"] for r in rows if r["status"] == "succeeded"}
    assert 30 <= len(recorded) < 400
    # the dead run held more than its 20 calls in flight: the chunk it had claimed ahead
    assert sum(r["status"] == "running" for r in rows) > 20
    # The resumed run waits out the dead runner's leases, then finishes.
    site.sim.configure(ttft=0.0)
    result = site.manage("process_job", str(job_id), timeout=180)
    assert "400 succeeded" in result.stdout
    paid = {}
    for entry in site.sim.stats()["prompt_counts"].values():
        paid[entry["preview"]] = paid.get(entry["preview"], 0) + entry["paid"]
    for text in recorded:
        assert paid[f"Summarize: {text}"[:40]] == 1, f"{text!r} was paid for again after it had succeeded"


def test_submit_with_run_prints_the_same_estimate_beside_the_run_over_every_item(site):
    # More items than the first batch inserted with the job (``filling.FIRST_BATCH``): the rest
    # are inserted while the run starts, and the estimate (made beside the run) waits for them.
    docs = site.tmp / "many.txt"
    docs.write_text("".join(f"Same text {i % 4}\n" for i in range(1010)))  # 4 distinct: all counted
    alone = site.manage("submit_job", str(docs), "--template", "Say: {text}", "--max-tokens", "16")
    ran = site.manage("submit_job", str(docs), "--template", "Say: {text}", "--max-tokens", "16", "--run")
    estimate = [line for line in alone.stderr.splitlines() if line.startswith("estimate:")]
    assert len(estimate) == 1 and "for 1010 request(s) (4 distinct)" in estimate[0]
    assert [line for line in ran.stderr.splitlines() if "estimate:" in line] == estimate  # once, the same
    assert "1010 succeeded" in ran.stdout
    job_id = int(ran.stdout.splitlines()[0])
    assert f"estimate ${estimate[0].split('$')[1].split()[0]}" in site.status(job_id)


def test_enqueue_then_db_worker_batch_succeeds(site):
    job_id = site.submit(30)
    site.manage(
        "shell",
        "-c",
        f"from llmjobs.jobs import job_enqueue; from llmjobs.models import BatchJob; job_enqueue(job=BatchJob.objects.get(pk={job_id}))",
    )
    assert "status:    queued" in site.status(job_id)
    site.manage("db_worker", "--batch", "--no-startup-delay", "--no-reload")
    assert "status:    succeeded" in site.status(job_id)
    assert all(r["status"] == "succeeded" for r in site.export(job_id))


def test_recover_jobs_re_enqueues_a_dead_workers_job(site):
    job_id = site.submit(20)
    # A worker died mid-job: the job is running, some items hold expired leases.
    site.manage(
        "shell",
        "-c",
        "from datetime import timedelta; from django.utils import timezone; from llmjobs.models import BatchJob, Item;"
        f"BatchJob.objects.filter(pk={job_id}).update(status='running');"
        f"Item.objects.filter(job_id={job_id}, position__lt=5).update(status='running', lease_expires_at=timezone.now() - timedelta(seconds=5))",
    )
    result = site.manage("recover_jobs")
    assert f"re-enqueued job {job_id}" in result.stdout
    assert "1 job(s) recovered" in result.stdout
    assert "0 job(s) recovered" in site.manage("recover_jobs").stdout  # queued once, not twice
    site.manage("db_worker", "--batch", "--no-startup-delay", "--no-reload")
    assert "status:    succeeded" in site.status(job_id)


def test_process_job_says_when_a_generous_max_tokens_holds_the_run_back(site, sim):
    """Issue 9: the output-token budget binds (max_tokens 1,024 reserved, ~70-token
    answers), so the summary ends with a max_tokens hint; a run with no limit has none."""
    sim.configure(otpm=30_000, burst=5, ttft=0.2, tps=1000)
    job_id = site.submit(40, "--max-tokens", "1024")
    result = site.manage("process_job", str(job_id), "--no-progress")
    assert f"job {job_id}: succeeded - 40 succeeded" in result.stdout
    hint = [line for line in result.stdout.splitlines() if line.startswith("hint: ")]
    assert len(hint) == 1 and "answers average" in hint[0] and "max_tokens" in hint[0], result.stdout
    advice = hint[0].removeprefix("hint: ")
    assert f"hint:      {advice}" in site.status(job_id)  # stored on the job: job_status, the page, the API
    assert json.loads(site.manage("job_status", str(job_id), "--json").stdout)["advice"] == advice

    sim.configure(otpm=0)
    free = site.submit(10, "--max-tokens", "1024")
    assert "hint:" not in site.manage("process_job", str(free), "--no-progress").stdout
