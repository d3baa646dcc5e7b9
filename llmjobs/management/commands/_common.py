"""Helpers shared by the llmjobs management commands (argparse types, lookups)."""

from __future__ import annotations

import argparse

from django.core.management.base import CommandError

from llmjobs.models import BatchJob


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be 1 or more")
    return number


def get_job(job_id: int) -> BatchJob:
    job = BatchJob.objects.filter(pk=job_id).first()
    if job is None:
        raise CommandError(f"job {job_id} does not exist")
    return job
