"""A job's items inserted by a thread that the test holds halfway (``llmjobs.filling``).

The web form and the API queue a job as soon as its first items are committed and
return; this process's filler thread inserts the rest (``fill(wait=False)``). A test
holds that thread before the batch at ``hold_at`` to look at the job while its items
are still arriving, then releases it and waits for it (``filling.join_fills``).
"""

from __future__ import annotations

import threading

from llmjobs import filling

FIRST = 100  # items committed with the job
BATCH = 50  # items per transaction after that


class HeldFill:
    def __init__(self, monkeypatch, hold_at: int = 200) -> None:
        monkeypatch.setattr(filling, "FIRST_BATCH", FIRST)
        monkeypatch.setattr(filling, "FILL_BATCH", BATCH)
        monkeypatch.setattr(filling, "HEAD_START", 0.0)  # no worker claims in these tests: no head start
        self.reached = threading.Event()
        self.released = threading.Event()
        real = filling._insert_batch

        def insert_batch(job_id, batch, done, total):
            if done >= hold_at:
                self.reached.set()
                assert self.released.wait(timeout=60), "the test never released the filler"
            real(job_id, batch, done, total)

        monkeypatch.setattr(filling, "_insert_batch", insert_batch)

    def wait_until_held(self) -> None:
        assert self.reached.wait(timeout=60), "the filler never reached the held batch"

    def release_and_join(self) -> None:
        self.released.set()
        assert filling.join_fills(timeout=60), "the filler did not finish"
