"""Keep the cyclic garbage collector's pauses off the event loop (issue 17: loop lag).

A process that runs the engine has a large heap that lives as long as it does: the
SDK, pydantic's schemas, httpx/aiohttp and, in the app, Django. CPython's full
(generation 2) collection scans all of it, on the loop's thread: measured 140 ms of
CPU per collection with Django + anthropic loaded, twice per 2,000-item run. And with
the default generation-0 threshold (700 allocations) a run of a few hundred calls in
flight collects generations 0 and 1 hundreds of times (about 10% of the CPU per call).

:func:`settle_heap` does the usual fix (Instagram's) once per process, at the first
engine run, after start-up: ``gc.freeze()`` moves everything alive into the permanent
generation, which collections never scan again, and the generation-0 threshold is
raised to ``YOUNG_THRESHOLD`` so that the short-lived objects of a call mostly die
before a collection looks at them. Cyclic garbage made later is still collected.
Freezing once (not at every run) matters: objects frozen are never freed, so a worker
that froze at each job would keep each job's leftovers forever. Imports no Django.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["YOUNG_THRESHOLD", "settle_heap", "settled"]

YOUNG_THRESHOLD = 10_000  # generation-0 allocations between collections (CPython's default: 700)

_lock = threading.Lock()
_settled = False


def settle_heap() -> bool:
    """Freeze the heap alive now and raise the young threshold, once per process.

    True when this call did it; False when it was already done (or the collector is
    switched off: then nothing is changed)."""
    global _settled
    with _lock:
        if _settled:
            return False
        _settled = True
    if not gc.isenabled():
        return False  # the application manages the collector itself
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return True


def settled() -> bool:
    """:func:`settle_heap` already ran in this process."""
    return _settled
