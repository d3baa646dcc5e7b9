"""Keep the cyclic garbage collector's pauses off the event loop (issue 17: loop lag).

A process that runs the engine has a large heap that lives as long as it does: the
SDK, pydantic's schemas, httpx/aiohttp and, in the app, Django. CPython's full
(generation 2) collection scans all of it, on the loop's thread: measured 140 ms of
CPU per collection with Django + anthropic loaded. :func:`settle_heap` does the usual
fix (Instagram's) once per process, at the first engine run, after start-up:
``gc.freeze()`` moves everything alive into the permanent generation, which
collections never scan again. Freezing once (not at every run) matters: objects frozen
are never freed, so a worker that froze at each job would keep each job's leftovers.

It also sets the thresholds (``THRESHOLDS``) so that no collection is long. What a
young collection scans is not the threshold's count: CPython counts allocations *minus
deallocations*, and while calls run, the calls that finish (their objects already
promoted) free about as much as the calls that start allocate. The count wanders; the
young generation grows with every call started until the count happens to cross the
threshold. With 10,000 (this module's former setting) a tier-4 run's young collections
found 40,000+ objects (the coroutines, frames and dicts of the calls in flight): 13 to
27 ms each, on the loop, several times a run, collecting nothing. A threshold under the
count's usual excursion (on the tier-4 bench, between 700 and 1,000: at 1,000 young
collections still took 7 to 8 ms) collects often and small: 0.8 to 1.4 ms.
Generation 1 is then collected every third young collection, so that it holds little
(3 to 4 ms), and generation 2, which would scan everything not frozen (30 ms on the
bare engine, more with Django), only after 1,000 of those (about every 20,000 calls at
tier 4; the calls' objects die by reference counting long before: a full collection
after a 2,000-call run finds a handful of objects). The collector's total CPU is about
0.1 ms a call (measured 0.04 at 10,000; each young collection has a fixed cost).

Cyclic garbage made later is still collected. An application that tuned the collector
itself (other thresholds, or switched it off) keeps its tuning. Imports no Django.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["THRESHOLDS", "settle_heap", "settled"]

THRESHOLDS = (500, 3, 1000)  # generation 0, 1 and 2 (CPython's default: 700, 10, 10)
_DEFAULT = (700, 10, 10)

_lock = threading.Lock()
_settled = False


def settle_heap() -> bool:
    """Freeze the heap alive now and set the collector's thresholds, once per process.

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
    if gc.get_threshold() == _DEFAULT:
        gc.set_threshold(*THRESHOLDS)
    return True


def settled() -> bool:
    """:func:`settle_heap` already ran in this process."""
    return _settled
