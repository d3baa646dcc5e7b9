"""Short GIL slices while a runner's writer thread works (issue 17: event-loop lag).

The runner has two busy threads: the event loop (HTTP) and the writer (ORM). The loop
gives up the GIL on every socket call and must then wait for the writer to give it back,
which CPython forces only every ``sys.getswitchinterval()`` (5 ms by default): one loop
pass with a dozen socket calls could wait 60 ms. While any runner runs in the process,
the interval is ``SWITCH_INTERVAL`` (1 ms), then restored. Pure Python, no Django.

Measured (issue 17, ``bench/runner.py --gil-check``): a pass of 20 socket send/recv pairs
while another thread runs Python takes p90 11.9 ms / max 65.8 ms at 5 ms, 3.6 / 28.5 ms at
1 ms (0.1 ms with the other thread idle). In whole runner runs on a loaded machine
(``--gil-interval 0.005`` against the default) the difference was within the noise:
the writer is busy a small part of the time. Kept: it bounds the loop's wait whenever the
writer renders a chunk or writes a batch, and costs nothing measurable.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SWITCH_INTERVAL", "short_gil_slices"]

SWITCH_INTERVAL = 0.001  # seconds

_lock = threading.Lock()
_users = 0
_saved: float | None = None


@contextmanager
def short_gil_slices(interval: float | None = None) -> Iterator[None]:
    """While in the block (nested or from several threads), the switch interval is at most
    ``interval`` (default ``SWITCH_INTERVAL``, read at each call); the one found before is
    restored when the last block ends."""
    global _users, _saved
    if interval is None:
        interval = SWITCH_INTERVAL
    with _lock:
        if _users == 0:
            _saved = sys.getswitchinterval()
            if _saved > interval:
                sys.setswitchinterval(interval)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                sys.setswitchinterval(_saved)
                _saved = None
