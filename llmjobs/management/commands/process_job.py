"""`manage.py process_job ID`: run a job now, with live progress.

Progress: a tqdm bar on a terminal (done/total, items/s, 429s, cost so far,
ETA), one plain line every few seconds otherwise, only the final summary with
``--no-progress``.

SIGINT (Ctrl-C) or SIGTERM stops cleanly: nothing new is sent, calls in
flight may finish for ``LLMJOBS_DRAIN_SECONDS`` and their answers are stored,
the rest goes back to pending, and the job is marked interrupted (run again to
resume; exit status 130). A second signal stops at once, still releasing the
leases. A run that can't go on (the database unwritable past
``LLMJOBS_DB_OUTAGE_SECONDS``, a bad key...) exits non-zero with one line.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from llmjobs.cli_progress import CliProgress, choose_mode
from llmjobs.jobs import job_run
from llmjobs.pricing import model_known
from llmjobs.results import job_cost_so_far
from llmjobs.runner import JobRunner, stop_on_signals

from ._common import get_job

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Process a job now with a progress bar. Ctrl-C stops cleanly; run again to resume."

    # A caller's hooks (``submit_job --run``'s estimate): ``on_output`` is given the progress's
    # ``write`` once the bar exists (a line printed with it keeps the bar whole), ``None`` when
    # it closes; ``on_dispatch`` is called once the engine has taken the run's first call.
    on_output: Callable[[Callable[[str], None] | None], None] | None = None
    on_dispatch: Callable[[], None] | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--no-progress", action="store_true", help="Print only the final summary")

    def _dispatched(self, model: str) -> None:
        """The engine took the first call: what the run needs soon loads beside it."""
        threading.Thread(target=_load_prices, args=(model,), name="llmjobs-prices", daemon=True).start()
        if self.on_dispatch is not None:
            self.on_dispatch()

    def handle(self, *args: Any, job_id: int, no_progress: bool, **opts: Any) -> None:
        job = get_job(job_id)
        if job.status == job.Status.CANCELLED:
            raise CommandError(f"job {job_id} is cancelled")
        stream = cast(TextIO, self.stderr._out)
        # Nothing spent yet: nothing to price before the run (an unknown model still shows "cost
        # unknown": the bar prices what it adds). genai-prices' first use is paid beside the run.
        spent = job.cost_usd or job.input_tokens or job.output_tokens
        bar = CliProgress(
            total=job.total,
            initial=job.done_count,
            model=job.model,
            cost_before=job_cost_so_far(job) if spent else Decimal(0),
            mode=choose_mode(no_progress=no_progress, stream=stream),
            stream=stream,
        )
        runner = JobRunner(job_id, on_progress=bar, on_dispatch=partial(self._dispatched, job.model))
        if self.on_output is not None:
            self.on_output(bar.write)

        def on_signal(signum: int, hard: bool) -> None:
            name = signal.Signals(signum).name
            if hard:
                message = f"{name} again: stopping now, putting in-flight items back to pending..."
            else:
                message = (
                    f"{name}: stopping; in-flight calls may finish for {runner.drain_seconds:g} s "
                    f"and are stored, the rest goes back to pending ({name} again to stop now)..."
                )
            bar.write(message)

        try:
            with stop_on_signals(runner, on_signal=on_signal):
                report = job_run(job=job, runner=runner)
        finally:
            if self.on_output is not None:
                self.on_output(None)
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
        if report.advice:  # the output-token budget held the run back and max_tokens is far above the answers
            self.stdout.write(f"hint: {report.advice}")


def _load_prices(model: str) -> None:
    """genai-prices' first use (~30 ms: its data), while the first calls are in flight, not on
    the loop when the first answer is priced (the bar's cost) nor before the first call."""
    time.sleep(0.05)  # the first calls' sending goes first: the GIL is shared
    try:
        model_known(model)
    except Exception:  # only a warm-up: the bar and the writer price (and report) on their own
        log.debug("loading genai-prices failed", exc_info=True)
