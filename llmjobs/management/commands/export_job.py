"""`manage.py export_job ID --format csv|jsonl [-o FILE]`: results in input order."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmjobs.jobs import ExportFormat, job_export

from ._common import get_job


class Command(BaseCommand):
    help = "Export a job's items in input order, errors included, as CSV or JSONL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--format", dest="fmt", choices=["csv", "jsonl"], default="csv")
        parser.add_argument("-o", "--output", help="File to write (default: stdout)")

    def handle(self, *args: Any, job_id: int, fmt: ExportFormat, output: str | None, **opts: Any) -> None:
        job = get_job(job_id)
        if output:
            try:
                with open(output, "w", encoding="utf-8", newline="") as out:
                    count = job_export(job=job, fmt=fmt, out=out)
            except OSError as exc:
                raise CommandError(f"{output}: {exc.strerror}") from None
            self.stderr.write(f"wrote {count} item(s) to {output}")
        else:
            stream = cast(TextIO, self.stdout._out)  # the underlying stream
            try:
                job_export(job=job, fmt=fmt, out=stream)
                stream.flush()
            except BrokenPipeError:
                # The reader went away (`export_job 1 | head`): stop quietly, as Unix tools do.
                # Point stdout at /dev/null so the interpreter's final flush doesn't complain.
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, sys.stdout.fileno())
                except (OSError, ValueError):
                    pass
                finally:
                    os.close(devnull)
