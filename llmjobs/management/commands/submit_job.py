"""`manage.py submit_job FILE --template ...`: create a job from a file, print its id."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from llmjobs.conf import llmjobs_settings
from llmjobs.costs import apply_cost_options
from llmjobs.estimate import job_estimate
from llmjobs.exceptions import JobInputError
from llmjobs.filling import fill_open
from llmjobs.jobs import job_create
from llmjobs.models import BatchJob

from ._common import positive_int


class Command(BaseCommand):
    help = (
        "Create a job from a CSV, JSONL or TXT file (one item per line; '-' reads stdin as TXT) "
        "and print its id. With --run, also process it now (starting while the items are inserted)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="CSV, JSONL or TXT file, or '-' for lines on stdin")
        parser.add_argument("--template", required=True, help="Prompt template, e.g. 'Summarize: {text}'")
        parser.add_argument("--column", help="CSV: the column that holds the text")
        parser.add_argument("--field", help="JSONL: the field that holds the text")
        parser.add_argument("--format", dest="fmt", choices=["csv", "jsonl", "txt"], help="Override the extension")
        parser.add_argument("--name", help="Job name (default: the file name)")
        parser.add_argument("--model", default=llmjobs_settings().default_model)
        parser.add_argument("--system", default="", help="System prompt")
        parser.add_argument("--max-tokens", type=positive_int, default=1024)
        parser.add_argument("--stop", action="append", default=[], help="Stop sequence (repeatable)")
        parser.add_argument(
            "--concurrency", type=positive_int, default=None, help="In-flight ceiling (default: automatic)"
        )
        parser.add_argument("--rpm", type=positive_int, default=None, help="Requests-per-minute cap for this job")
        parser.add_argument(
            "--schema", help="Output JSON Schema file (an object): every answer is JSON that matches it"
        )
        parser.add_argument("--webhook-url", default="", help="POSTed a signed job.finished event when the job ends")
        parser.add_argument(
            "--budget-usd", type=float, default=None, help="Stop before the job's cost would pass this (resumable)"
        )
        parser.add_argument(
            "--mode",
            choices=["online", "batch"],
            default="online",
            help="batch: the Message Batches API, 50%% cheaper, results within 24 h",
        )
        parser.add_argument(
            "--no-dedup", action="store_true", help="Send identical requests each time (default: once, shared)"
        )
        parser.add_argument(
            "--no-estimate", action="store_true", help="Skip the cost estimate (count_tokens on a sample; free)"
        )
        parser.add_argument("--run", action="store_true", help="Process the job now, with a progress bar")

    def handle(self, *args: Any, file: str, **opts: Any) -> None:
        if file == "-":
            name, data, fmt = "stdin.txt", sys.stdin.buffer.read(), opts["fmt"] or "txt"
        else:
            path = Path(file)
            if not path.is_file():
                raise CommandError(f"{file}: no such file")
            name, data, fmt = path.name, path.read_bytes(), opts["fmt"]
        schema = None
        if opts["schema"]:
            schema_path = Path(opts["schema"])
            if not schema_path.is_file():
                raise CommandError(f"{opts['schema']}: no such file")
            try:
                schema = schema_path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise CommandError(f"{opts['schema']}: not UTF-8 text") from None
        budget = opts["budget_usd"]
        if budget is not None and not budget > 0:  # checked before anything is written
            raise CommandError("--budget-usd: the budget must be more than $0")
        # --run starts the engine as soon as the first batch of items is committed, while
        # the rest is inserted (``job_create(start=...)``); batch mode sends all items at once.
        early = opts["run"] and opts["mode"] != "batch"
        try:
            job = job_create(
                name=opts["name"] or name,
                template=opts["template"],
                model=opts["model"],
                system=opts["system"],
                max_tokens=opts["max_tokens"],
                stop_sequences=opts["stop"],
                concurrency=opts["concurrency"],
                rate_limit_rpm=opts["rpm"],
                file_name=name,
                file_data=data,
                column=opts["column"],
                field=opts["field"],
                fmt=fmt,
                schema=schema,
                webhook_url=opts["webhook_url"],
                start=partial(self._created, opts=opts) if early else None,
                head_start=True,  # the run is in this process
            )
        except JobInputError as exc:
            raise CommandError(f"{name}: {exc}") from None
        if not early:
            self._created(job, opts=opts)

    def _created(self, job: BatchJob, *, opts: dict[str, Any]) -> None:
        """The job exists (with at least its first batch of items): set its cost options,
        print its id and the estimate, and with --run process it.

        With --run the estimate is made on a thread beside the run (``EstimateLine``), started
        once the engine has taken the first call: the first calls need not wait for it (its
        client, ``count_tokens`` calls and rendering cost 0.1-0.5 s), it works while they are in
        flight, and it is the same estimate (``as_of`` the run's start), printed when ready.
        Nothing it says decides whether the job may run: quotas were checked before the job
        was created, and the budget is enforced call by call."""
        try:
            apply_cost_options(job, budget_usd=opts["budget_usd"], dedup=not opts["no_dedup"], mode=opts["mode"])
        except ValueError as exc:  # not reached: the budget was checked before
            raise CommandError(f"--budget-usd: {exc}") from None
        self.stdout.write(str(job.pk))
        estimate = None if opts["no_estimate"] else EstimateLine(job, self.stderr.write)
        if not opts["run"]:
            if estimate is not None:
                estimate.run()
            return
        from .process_job import Command as ProcessJob

        process = ProcessJob()
        if estimate is not None:
            process.on_output = estimate.attach  # the line goes through the progress bar
            process.on_dispatch = estimate.start
        finished = False
        try:
            call_command(process, job.pk, stdout=self.stdout, stderr=self.stderr)
            finished = True
        finally:
            if estimate is not None:
                estimate.finish(wait=finished)


ESTIMATE_DELAY = 0.05  # seconds between the first call taken by the engine and the estimate's start


class EstimateLine:
    """``job_estimate(job=job, as_of=<now>)`` printed as one line (on stderr: stdout stays the
    job's id, for scripts), here or on a thread of its own beside the run (``start``).

    From the thread the line is written once, as soon as it is ready, through the writer
    attached last (``attach``: the progress bar's, which keeps the bar whole); ``finish``
    writes it through the first writer if nobody has yet."""

    def __init__(self, job: BatchJob, write: Callable[[str], Any]) -> None:
        self.job = job
        self.as_of = timezone.now()
        self._default = write
        self._write: Callable[[str], Any] | None = None
        self._line: str | None = None
        self._written = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Estimate and write the line now."""
        self.finish()

    def start(self) -> None:
        """Estimate on a thread of its own (once; the line is written when ready)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._in_thread, name=f"llmjobs-estimate-{self.job.pk}", daemon=True)
            self._thread.start()

    def _in_thread(self) -> None:
        time.sleep(ESTIMATE_DELAY)  # the first calls' sending goes first: the GIL is shared
        try:
            while fill_open(self.job.pk):  # the items still being inserted are part of the estimate
                time.sleep(0.05)
            line = self._estimate()
        except Exception as exc:
            line = self._unavailable(exc)
        finally:
            connection.close()  # this thread's own connection
        self._ready(line)

    def _estimate(self) -> str:
        try:
            return job_estimate(job=self.job, as_of=self.as_of).line()
        except Exception as exc:
            return self._unavailable(exc)

    @staticmethod
    def _unavailable(exc: Exception) -> str:
        return f"estimate: unavailable ({type(exc).__name__}: {' '.join(str(exc).split())})"

    def _ready(self, line: str) -> None:
        with self._lock:
            self._line = line
            self._flush()

    def _flush(self) -> None:  # under the lock
        if self._line is not None and not self._written and self._write is not None:
            self._written = True
            self._write(self._line)

    def attach(self, write: Callable[[str], Any] | None) -> None:
        """Write the line through ``write`` from now on (``None``: hold it until ``finish``)."""
        with self._lock:
            self._write = write
            self._flush()

    def finish(self, *, wait: bool = True) -> None:
        """Write the line through the first writer if it was not written yet. With ``wait``,
        wait for it (estimating now if the thread never started: a run that sent nothing);
        a run that failed does not wait for an estimate."""
        if wait and self._thread is None:
            self._ready(self._estimate())
        elif wait and self._thread is not None:
            self._thread.join()
        self.attach(self._default)
