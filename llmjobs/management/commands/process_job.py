"""`manage.py process_job ID`: run a job now, with a tqdm progress bar.

Ctrl-C stops cleanly: in-flight items go back to pending and a later run
resumes them. A second Ctrl-C stops at once (leases then expire in 30 s).
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from llmjobs.cli_progress import CliProgress, choose_mode
from llmjobs.jobs import job_run
from llmjobs.results import job_cost_so_far
from llmjobs.runner import JobRunner, engine_counter

from ._common import get_job


class ProgressBar:
    """A tqdm bar fed by the runner as items finish: done/total, items/s, 429s, ETA."""

    def __init__(self, *, total: int, initial: int, disable: bool, stream: TextIO) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="item", dynamic_ncols=True, disable=disable, file=stream)
        self._last_postfix = 0.0

    def __call__(self, runner: JobRunner) -> None:
        stats = runner.stats
        self.bar.n = runner.report.succeeded + runner.report.failed + self.bar.initial
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
        stream = cast(TextIO, self.stderr._out)
        bar = CliProgress(
            total=job.total,
            initial=job.done_count,
            model=job.model,
            cost_before=job_cost_so_far(job),
            mode=choose_mode(no_progress=no_progress, stream=stream),
            stream=stream,
        )
        runner = JobRunner(job_id, on_progress=bar)

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once
            bar.write("Stopping: finishing writes, putting in-flight items back to pending...")
            runner.request_stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            report = job_run(job=job, runner=runner)
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        job.refresh_from_db()
        summary = (
            f"job {job.pk}: {job.get_status_display().lower()} - {job.succeeded_count} succeeded, "
            f"{job.failed_count} failed, {job.cancelled_count} cancelled of {job.total}; "
            f"{job.input_tokens} input / {job.output_tokens} output tokens, ~${job.cost_estimate}"
        )
        if report.aborted:
            raise CommandError(f"job {job.pk} stopped: {report.aborted}")
        if report.interrupted:
            raise CommandError(
                f"interrupted: {job.total - job.done_count} item(s) left pending; "
                f"run 'manage.py process_job {job.pk}' to resume",
                returncode=130,
            )
        self.stdout.write(summary)
