"""`manage.py submit_job FILE --template ...`: create a job from a file, print its id."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmjobs.conf import llmjobs_settings
from llmjobs.costs import apply_cost_options
from llmjobs.estimate import job_estimate
from llmjobs.exceptions import JobInputError
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
        print its id and the estimate, and with --run process it."""
        try:
            apply_cost_options(job, budget_usd=opts["budget_usd"], dedup=not opts["no_dedup"], mode=opts["mode"])
        except ValueError as exc:  # not reached: the budget was checked before
            raise CommandError(f"--budget-usd: {exc}") from None
        self.stdout.write(str(job.pk))
        if not opts["no_estimate"]:  # on stderr: stdout stays the job's id, for scripts
            try:
                self.stderr.write(job_estimate(job=job).line())
            except Exception as exc:
                self.stderr.write(f"estimate: unavailable ({type(exc).__name__}: {' '.join(str(exc).split())})")
        if opts["run"]:
            call_command("process_job", job.pk, stdout=self.stdout, stderr=self.stderr)
