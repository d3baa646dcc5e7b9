"""Two real `manage.py process_job` processes under one org limit (issue 12 part 3):
shared by tests/test_org_governor.py (a small run) and bench/org_limits.py (600 items).

Each process runs its own job (half the items); both start together against one
simulator configured with ``rpm`` and ``burst``. Nothing here asserts on time: the
result carries counts (429s, requests, items per status) and, for people to read,
the wall time from the first job's start to the last one's end in the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tests.fault_site import FaultSite


@dataclass
class TwoRun:
    items: int
    shared: bool
    requests: int = 0
    rate_limited: int = 0
    succeeded: int = 0
    wall: float = 0.0
    returncodes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status_lines: list[str] = field(default_factory=list)

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


def bound_seconds(items: int, rpm: float, burst: float, latency: float = 0.0) -> float:
    """The least time ``rpm`` with a ``burst``-second bucket allows for ``items`` requests
    (the full bucket goes at once, the rest at the refill rate), plus one call's latency."""
    rate = rpm / 60.0
    return max(0.0, items - rate * burst) / rate + latency


def run_two(site: FaultSite, *, items: int, rpm: int, burst: float, ttft: float, shared: bool) -> TwoRun:
    site.sim.reset()
    site.sim.configure(rpm=rpm, burst=burst, ttft=ttft)
    half = items // 2
    jobs = [site.submit(half), site.submit(items - half)]
    flag = "1" if shared else "0"
    procs = [site.popen("process_job", str(j), "--no-progress", LLMJOBS_SHARED_GOVERNOR=flag) for j in jobs]
    run = TwoRun(items=items, shared=shared)
    for proc in procs:
        code, _out, err = site.finish(proc, timeout=600)
        run.returncodes.append(code)
        if code != 0:
            run.errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
    stats = site.sim.stats(brief=True)["by_status"]
    run.requests = sum(stats.values())
    run.rate_limited = stats.get("429", 0)
    for j in jobs:
        run.succeeded += site.counts(j).get("succeeded", 0)
    marks = site.query(
        "SELECT MIN(started_at), MAX(finished_at) FROM llmjobs_batchjob WHERE id IN (?, ?)", (jobs[0], jobs[1])
    )
    start, end = marks[0]
    if isinstance(start, str):  # SQLite
        start, end = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    run.wall = (end - start).total_seconds()
    run.status_lines = [
        line for line in site.manage("job_status", str(jobs[0])).stdout.splitlines() if "shared" in line
    ]
    return run


def run_one(site: FaultSite, *, items: int, shared: bool) -> float:
    """One `process_job` alone (no limit, instant answers): the job's wall seconds in the database."""
    site.sim.reset()
    site.sim.configure(ttft=0.0)
    job = site.submit(items)
    site.manage("process_job", str(job), "--no-progress", LLMJOBS_SHARED_GOVERNOR="1" if shared else "0")
    [(start, end)] = site.query("SELECT started_at, finished_at FROM llmjobs_batchjob WHERE id = ?", (job,))
    if isinstance(start, str):  # SQLite
        start, end = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return float((end - start).total_seconds())
