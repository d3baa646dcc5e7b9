"""Database calls that survive an outage: ``DbRetry``, used by every thread that must not
lose a write (the runner's writer thread, batch mode, the thread inserting a job's items).

A transient error (``OperationalError`` / ``InterfaceError``: a held SQLite lock, a
terminated PostgreSQL backend, a dropped connection) closes the thread's connection, so
that the next try opens a fresh one, and is retried with exponential backoff and jitter.
When the database has been unreachable for ``outage_seconds`` (``LLMJOBS_DB_OUTAGE_SECONDS``),
:class:`DatabaseUnavailable` says so in one line. Imports no SDK (only Django's database
layer), so a process that never calls the API does not pay for importing it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from django.db import InterfaceError, OperationalError, connection

__all__ = ["DB_RETRY_BASE", "DB_RETRY_MAX", "TRANSIENT_DB_ERRORS", "DatabaseUnavailable", "DbRetry", "one_line"]

log = logging.getLogger("llmjobs.runner")

DB_RETRY_BASE = 0.05  # seconds: first wait before retrying a failed database call
DB_RETRY_MAX = 2.0  # seconds: longest wait between database retries

# Errors of a database that is (for now) unreachable or locked: retried over a fresh connection.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnavailable(Exception):
    """The database stayed unwritable past ``LLMJOBS_DB_OUTAGE_SECONDS``."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Report(Protocol):
    db_retries: int


class DbRetry:
    """Runs database calls, retrying transient errors over a fresh connection.

    One instance per run (or per inserting thread), used from one thread only. ``down_since`` is
    shared by all calls, so the outage limit counts from the first failure of
    the current outage whatever the call. ``stop`` (a second Ctrl-C) ends the
    waiting at once; ``gave_up`` makes later calls fail on their first error.
    """

    __slots__ = ("down_since", "gave_up", "label", "outage_seconds", "report", "stop")

    def __init__(
        self,
        *,
        label: str,
        outage_seconds: float,
        stop: threading.Event | None = None,
        report: _Report | None = None,
    ) -> None:
        self.label = label
        self.outage_seconds = outage_seconds
        self.stop = stop or threading.Event()
        self.report = report  # counts the retries (``db_retries``), when given
        self.down_since: float | None = None  # monotonic time of the first failure of this outage
        self.gave_up = False

    def call(self, fn: Callable[..., Any], *args: Any, budget: float | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried until it works or the outage has lasted too long.
        With ``budget``, retried for at most ``budget`` seconds of this call instead
        (the last flush and release of a run that stops)."""
        started = time.monotonic()
        failures = 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except TRANSIENT_DB_ERRORS as exc:
                failures += 1
                if self.report is not None:
                    self.report.db_retries += 1
                now = time.monotonic()
                if self.down_since is None:
                    self.down_since = now
                    log.warning("%s: database error, retrying: %s", self.label, one_line(exc))
                try:
                    connection.close()  # the next query opens a fresh connection
                except Exception:  # a broken connection may fail to close: it is gone either way
                    log.debug("closing the broken connection failed", exc_info=True)
                down_for = now - self.down_since
                if budget is not None:
                    give_up = now - started >= budget
                else:
                    give_up = down_for >= self.outage_seconds or self.gave_up or self.stop.is_set()
                if give_up:
                    raise DatabaseUnavailable(
                        f"the database could not be written for {down_for:.0f} s "
                        f"({type(exc).__name__}: {one_line(exc)})"
                    ) from exc
                delay = min(DB_RETRY_MAX, DB_RETRY_BASE * 2 ** min(failures - 1, 10))
                self.stop.wait(delay * (0.5 + random.random() / 2))
                continue
            if self.down_since is not None:
                log.warning("%s: database back after %.1f s", self.label, time.monotonic() - self.down_since)
                self.down_since = None
            return result
