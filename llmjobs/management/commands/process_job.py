"""`manage.py process_job ID`: run a job now, with a tqdm progress bar.

SIGINT (Ctrl-C) or SIGTERM stops cleanly: nothing new is sent, calls in
flight may finish for ``LLMJOBS_DRAIN_SECONDS`` and their answers are stored,
the rest goes back to pending, and the job is marked interrupted (run again to
resume; exit status 130). A second signal stops at once, still releasing the
leases. A run that can't go on (the database unwritable past
``LLMJOBS_DB_OUTAGE_SECONDS``, a bad key...) exits non-zero with one line.
"""

from __future__ import annotations

import signal
import time
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from tqdm import tqdm

from llmjobs.jobs import job_run
from llmjobs.runner import JobRunner, engine_counter, stop_on_signals

from ._common import get_job


class ProgressBar:
    """A tqdm bar fed by the runner as items finish: done/total, items/s, 429s, ETA."""

    def __init__(self, *, total: int, initial: int, disable: bool, stream: TextIO) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="item", dynamic_ncols=True, disable=disable, file=stream)
        self.initial = initial  # a disabled tqdm has no ``initial`` of its own
        self.disabled = disable
        self._last_postfix = 0.0

    def __call__(self, runner: JobRunner) -> None:
        if self.disabled:
            return
        stats = runner.stats
        self.bar.n = runner.report.succeeded + runner.report.failed + self.initial
        now = time.monotonic()
        if stats is not None and now - self._last_postfix > 0.5:
            self._last_postfix = now
            self.bar.set_postfix(
                failed=runner.report.failed,
                r429=engine_counter(stats, "rate_limited"),
                inflight=stats.in_flight,
                refresh=False,
            )
        self.bar.refresh() if now - self.bar.last_print_t > self.bar.mininterval else None

    def close(self) -> None:
        self.bar.close()


class Command(BaseCommand):
    help = "Process a job now with a progress bar. Ctrl-C stops cleanly; run again to resume."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--no-progress", action="store_true", help="No progress bar")

    def handle(self, *args: Any, job_id: int, no_progress: bool, **opts: Any) -> None:
        job = get_job(job_id)
        if job.status == job.Status.CANCELLED:
            raise CommandError(f"job {job_id} is cancelled")
        bar = ProgressBar(
            total=job.total, initial=job.done_count, disable=no_progress, stream=cast(TextIO, self.stderr._out)
        )
        runner = JobRunner(job_id, on_progress=bar)

        def on_signal(signum: int, hard: bool) -> None:
            name = signal.Signals(signum).name
            if hard:
                message = f"{name} again: stopping now, putting in-flight items back to pending..."
            else:
                message = (
                    f"{name}: stopping; in-flight calls may finish for {runner.drain_seconds:g} s "
                    f"and are stored, the rest goes back to pending ({name} again to stop now)..."
                )
            tqdm.write(message, file=cast(TextIO, self.stderr._out))

        try:
            with stop_on_signals(runner, on_signal=on_signal):
                report = job_run(job=job, runner=runner)
        finally:
            bar.close()
        if report.aborted:  # before reading the job again: the database may be what failed
            raise CommandError(f"job {job.pk} stopped: {report.aborted}")
        connection.close()  # this thread's connection may have died during the run: read over a fresh one
        job.refresh_from_db()
        summary = (
            f"job {job.pk}: {job.get_status_display().lower()} - {job.succeeded_count} succeeded, "
            f"{job.failed_count} failed, {job.cancelled_count} cancelled of {job.total}; "
            f"{job.input_tokens} input / {job.output_tokens} output tokens, ~${job.cost_estimate}"
        )
        if report.db_retries:
            summary += f"; {report.db_retries} database error(s) retried"
        if report.interrupted:
            raise CommandError(
                f"interrupted: {job.total - job.done_count} item(s) left pending; "
                f"run 'manage.py process_job {job.pk}' to resume",
                returncode=130,
            )
        self.stdout.write(summary)
