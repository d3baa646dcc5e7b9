"""Live CLI progress (issue 16): the runner's on_progress moves the bar / prints lines as items finish."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from llmjobs.cli_progress import CliProgress, choose_mode, format_cost
from llmjobs.jobs import job_create, job_run
from llmjobs.models import BatchJob
from llmjobs.runner import JobRunner

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeReport:
    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0


class FakeStats:
    def __init__(self) -> None:
        self.rate_limited = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0


class FakeRunner:
    def __init__(self) -> None:
        self.report = FakeReport()
        self.stats = FakeStats()


def test_mode_follows_the_flag_and_the_terminal():
    assert choose_mode(no_progress=True, stream=io.StringIO()) == "off"
    assert choose_mode(no_progress=False, stream=io.StringIO()) == "lines"  # not a TTY

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert choose_mode(no_progress=False, stream=Tty()) == "bar"


def test_plain_lines_every_interval_with_rate_429s_cost_and_eta():
    clock, out, runner = FakeClock(), io.StringIO(), FakeRunner()
    progress = CliProgress(
        total=100, initial=0, model="claude-haiku-4-5", mode="lines", stream=out, interval=5.0, clock=clock
    )
    for _ in range(40):  # 40 items at 4 items/s: 10 s of fake time
        clock.now += 0.25
        runner.report.succeeded += 1
        runner.stats.input_tokens += 100
        runner.stats.output_tokens += 20
        if runner.report.succeeded == 10:
            runner.stats.rate_limited = 3
        progress(runner)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one line every 5 s, not one per item
    assert lines[0].startswith("20/100 items (20%), 4.0 items/s, 3 429s, $")
    assert lines[1].startswith("40/100 items (40%)")
    assert lines[1].endswith("ETA 15s")  # 60 left at 4 items/s
    # cost so far: 4000 input + 800 output tokens of haiku 4.5 ($1 / $5 per MTok)
    assert progress.cost() == Decimal("0.008")
    progress.close()
    assert out.getvalue().splitlines()[-1].startswith("40/100 items")


def test_an_unknown_model_shows_cost_unknown():
    runner = FakeRunner()
    progress = CliProgress(total=3, initial=0, model="no-such-model", mode="off", stream=io.StringIO())
    runner.report.succeeded = 1
    runner.stats.output_tokens = 10
    progress(runner)
    assert progress.cost() is None and format_cost(progress.cost()) == "cost unknown"
    assert "cost unknown" in progress.line()


def test_no_progress_writes_nothing():
    out, runner = io.StringIO(), FakeRunner()
    progress = CliProgress(total=5, initial=0, model="claude-haiku-4-5", mode="off", stream=out)
    for _ in range(5):
        runner.report.succeeded += 1
        progress(runner)
    progress.close()
    assert out.getvalue() == "" and progress.done == 5


@pytest.mark.django_db(transaction=True)
def test_the_bar_moves_as_a_real_run_finishes_items(sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    job = job_create(
        name="bar", template="Summarize: {text}", model="claude-haiku-4-5", texts=[f"doc {i}" for i in range(30)]
    )
    out = io.StringIO()
    progress = CliProgress(total=job.total, initial=0, model=job.model, mode="bar", stream=out)
    progress.bar.mininterval = 0  # redraw on every item: we count the redraws
    seen: list[int] = []

    def on_progress(runner: JobRunner) -> None:
        progress(runner)
        seen.append(progress.done)

    job_run(job=job, runner=JobRunner(job.pk, on_progress=on_progress))
    progress.close()
    assert seen == list(range(1, 31))  # called once per finished item, in order
    text = out.getvalue()
    assert "30/30" in text and "429s=0" in text and "$" in text
    assert text.count("\r") >= 10  # redrawn while running, not only at the end
    assert BatchJob.objects.get(pk=job.pk).status == BatchJob.Status.SUCCEEDED


def _manage(tmp_path: Path, sim, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "DEBUG", "SECRET_KEY"}}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        LLMJOBS_SIMULATOR_URL=sim.base_url,
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kw
    )


def test_commands_work_without_debug_and_no_progress_prints_only_the_summary(tmp_path, sim):
    # No DEBUG, no SECRET_KEY, SQLite: the dev defaults `make run` uses, no traceback.
    assert _manage(tmp_path, sim, "migrate", "--noinput", "-v0").returncode == 0
    shell = _manage(tmp_path, sim, "shell", "-c", "print('ok')")
    assert shell.returncode == 0 and shell.stdout.strip().endswith("ok")
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"line {i}\n" for i in range(12)))
    submitted = _manage(tmp_path, sim, "submit_job", str(docs), "--template", "Say: {text}", "--max-tokens", "16")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    result = _manage(tmp_path, sim, "process_job", job_id, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing while running
    assert result.stdout.strip().startswith(f"job {job_id}: succeeded - 12 succeeded")


def test_createsuperuser_without_debug(tmp_path, sim):
    assert _manage(tmp_path, sim, "migrate", "--noinput", "-v0").returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "DEBUG", "SECRET_KEY"}}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_SUPERUSER_PASSWORD="a-long-password-123",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "root", "--email", "r@x.org"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # Production-looking settings without a SECRET_KEY: one line saying what to set.
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:1/none"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "SECRET_KEY is not set" in result.stderr


def test_export_to_a_closed_pipe_exits_quietly(tmp_path, sim):
    assert _manage(tmp_path, sim, "migrate", "--noinput", "-v0").returncode == 0
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"line {i} " + "x" * 200 + "\n" for i in range(5000)))
    job_id = _manage(tmp_path, sim, "submit_job", str(docs), "--template", "Say: {text}").stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "DEBUG", "SECRET_KEY"}}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    export = subprocess.Popen(
        [sys.executable, "manage.py", "export_job", job_id, "--format", "jsonl"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert export.stdout is not None and export.stderr is not None
    first = export.stdout.readline()  # `| head -1`: read one line, then close the pipe
    export.stdout.close()
    err = export.stderr.read().decode()
    export.wait(timeout=60)
    assert first.startswith(b'{"index": 0')
    assert err == "", err
    assert export.returncode == 0
