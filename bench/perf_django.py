"""bench/perf.py's Django rows: ``submit_job --run`` and start-up per job, each in a fresh process.

* :func:`submit_run` runs ``manage.py submit_job FILE --run`` (defaults otherwise) in a child
  interpreter on a fresh, migrated SQLite database, and times the command alone: Django and
  the SDK are imported before the clock starts, so the row compares with the bare engine's.
* :func:`startup` times whole fresh interpreters, from exec to exit: a 1-item
  ``submit_job --run`` against one bare SDK call (``import anthropic``, one client, one
  ``messages.create``), the same simulator for both.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The child: set up Django on the given database, import what the command imports, then time it.
_SUBMIT_CHILD = r"""
import io, json, os, sys, time
sys.path.insert(0, {root!r})
import django
django.setup()
import anthropic  # noqa: F401  (imported before the clock: start-up is measured on its own)
import llmjobs.runner  # noqa: F401
from django.core.management import call_command
from llmjobs.models import BatchJob, Item
t0 = time.perf_counter()
call_command("submit_job", {path!r}, template="{{text}}", max_tokens=128, run=True,
             stdout=io.StringIO(), stderr=io.StringIO())
wall = time.perf_counter() - t0
job = BatchJob.objects.latest("pk")
items = Item.objects.filter(job=job)
print(json.dumps({{"wall": wall, "n": items.count(),
                  "failed": items.exclude(status="succeeded").count()}}))
"""

_SDK_CHILD = r"""
import anthropic
c = anthropic.Anthropic(base_url={url!r}, api_key="bench", max_retries=2)
c.messages.create(model="claude-sonnet-5-5", max_tokens=128, messages=[{{"role": "user", "content": "Note on: x"}}])
c.close()
"""


def _env(db: str, sim_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_BASE_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY=env.get("SECRET_KEY", "bench-only-secret"),
        DATABASE_URL=f"sqlite:///{db}",
        LLMJOBS_SIMULATOR_URL=sim_url,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def _fresh_db(tmp: str, name: str, sim_url: str) -> dict[str, str]:
    env = _env(os.path.join(tmp, name + ".sqlite3"), sim_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--noinput"], cwd=ROOT, env=env, check=True)
    return env


def _write_texts(tmp: str, items: list[dict]) -> str:
    path = os.path.join(tmp, f"items{len(items)}.txt")
    with open(path, "w", encoding="utf-8") as fh:
        for p in items:
            fh.write(p["messages"][0]["content"].replace("\n", " ") + "\n")
    return path


def submit_run(sim_url: str, items: list[dict]) -> dict:
    """``submit_job FILE --run`` over these items' texts: {"wall", "n", "failed"}."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _fresh_db(tmp, "submit", sim_url)
        path = _write_texts(tmp, items)
        code = _SUBMIT_CHILD.format(root=str(ROOT), path=path)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"submit_job --run failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def startup(sim_url: str, repeat: int = 3) -> dict[str, float]:
    """Median seconds of a fresh 1-item ``submit_job --run`` and of a fresh one-call SDK script."""
    job_walls, sdk_walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = _fresh_db(tmp, "startup", sim_url)
        path = os.path.join(tmp, "one.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("Note on: x\n")
        cmd = [sys.executable, "manage.py", "submit_job", path, "--template", "{text}", "--max-tokens", "128", "--run"]
        sdk = [sys.executable, "-c", _SDK_CHILD.format(url=sim_url)]
        for _ in range(repeat):
            for argv, walls in ((cmd, job_walls), (sdk, sdk_walls)):
                t0 = time.perf_counter()
                subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
                walls.append(time.perf_counter() - t0)
    return {"job": statistics.median(job_walls), "sdk": statistics.median(sdk_walls)}
