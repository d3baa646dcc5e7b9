"""Stopping a run on SIGTERM / SIGINT, in ``process_job`` and in a worker's task.

The first signal drains (nothing new is sent; calls in flight may finish for
``LLMJOBS_DRAIN_SECONDS`` and their answers are stored; the rest goes back to
pending; the job is marked interrupted and resumable). A second signal stops at
once, still releasing the leases.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["stop_on_signals"]


class _Stoppable(Protocol):
    def request_stop(self, *, now: bool = False) -> None: ...


@contextmanager
def stop_on_signals(
    runner: _Stoppable,
    *,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    on_signal: Callable[[int, bool], None] | None = None,
    chain_first: bool = False,
) -> Iterator[None]:
    """While in the block, SIGTERM and SIGINT stop ``runner`` cleanly: the first drains
    (``request_stop()``), a second stops at once (``request_stop(now=True)``).
    ``on_signal(signum, hard)`` is told first. With ``chain_first`` the handler
    installed before (a worker's own graceful shutdown, e.g. django-tasks-db's
    ``db_worker``) is called on the first signal too, so the worker stops after
    this job instead of waiting for the next. A third signal ends the process
    (default handlers). Signal handlers live in the main thread: anywhere else
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signals}
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hard = bool(seen)
        seen.append(signum)
        if on_signal is not None:
            on_signal(signum, hard)
        runner.request_stop(now=hard)
        if hard:  # a third signal gets the default behaviour (the process ends without cleanup)
            for each in signals:
                signal.signal(each, signal.SIG_DFL)
        before = previous.get(signum)
        if chain_first and not hard and callable(before) and before is not signal.default_int_handler:
            before(signum, frame)

    for signum in signals:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
