"""Benchmark: a 100k-row upload through the web form, Run at once (issue 17).

Prints, for each run: seconds from the POST to its response (the redirect to the job
page), to the first item answered (the earliest ``finished_at`` of a succeeded item), and
to the last item inserted. The app runs under ``manage.py serve --no-worker`` (uvicorn),
with one ``db_worker --interval 0.1`` started and warm beforehand, against the simulator
(instant answers), on a fresh SQLite file (or ``--pg URL``: a database of its own, dropped).

``--root DIR`` runs another checkout's code (e.g. /work/main, for an A/B pair): the
simulator, the server and the worker all come from it; this script only drives them.

Usage: .venv/bin/python bench/submit_web.py [--n 100000] [--runs 1] [--root DIR] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

PASSWORD = "bench-password-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_file(path: Path, n: int) -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "cat", "watches"]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(f"Doc {i:06d}: " + " ".join(words[(i + k) % len(words)] for k in range(10 + i % 60)) + "\n")


class Site:
    def __init__(self, root: Path, sim_url: str, pg: str | None) -> None:
        self.root = root
        self.dir = Path(tempfile.mkdtemp(prefix="llmjobs-bench-submit-web-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.pg_db = f"bench_submit_web_{uuid.uuid4().hex[:8]}" if pg else None
        db_url = (
            pg.rsplit("/", 1)[0] + "/" + self.pg_db if pg and self.pg_db else f"sqlite:///{self.dir / 'db.sqlite3'}"
        )
        self.pg_admin = pg
        self.db_url = db_url
        self.env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}}
        self.env.update(
            DEBUG="0",
            SECRET_KEY="bench-only-secret-key-0123456789-0123456789",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=db_url,
            LLMJOBS_SIMULATOR_URL=sim_url,
            LOG_LEVEL="WARNING",
            DJANGO_SETTINGS_MODULE="project.settings",
        )
        self.procs: list[subprocess.Popen] = []

    def manage(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        if out.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self) -> None:
        if self.pg_db:
            import psycopg

            with psycopg.connect(self.pg_admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {self.pg_db}")
        self.manage("migrate", "--noinput", "-v0")
        self.manage(
            "shell",
            "-c",
            f"from django.contrib.auth import get_user_model as g; g().objects.create_user('bench', password={PASSWORD!r})",
        )
        log = open(self.dir / "serve.log", "w")
        for args in (
            ["serve", "--no-simulator", "--no-worker", "--port", str(self.port)],
            ["db_worker", "--no-reload", "--no-startup-delay", "--interval", "0.1"],
        ):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", *args],
                    cwd=self.root,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not start") from None
                time.sleep(0.05)
        time.sleep(3)  # the worker's imports

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.pg_db:
            import psycopg

            with psycopg.connect(self.pg_admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_db} WITH (FORCE)")

    def query(self, sql: str, params: tuple) -> tuple:
        if self.pg_db:
            import psycopg

            with psycopg.connect(self.db_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
                return conn.execute(sql, params).fetchone()  # type: ignore[return-value]
        conn = sqlite3.connect(self.dir / "db.sqlite3", timeout=30)
        try:
            return conn.execute(sql.replace("%s", "?"), params).fetchone()
        finally:
            conn.close()


def _utc(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


async def post_upload(site: Site, path: Path) -> tuple[float, float, int]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        login = site.base_url + "/accounts/login/"
        async with session.get(login) as r:
            await r.read()
        csrf = next(c.value for c in session.cookie_jar if c.key == "csrftoken")
        data = {"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": csrf}
        async with session.post(login, data=data, allow_redirects=False, headers={"Referer": login}) as r:
            assert r.status == 302, r.status
        csrf = next(c.value for c in session.cookie_jar if c.key == "csrftoken")
        form = aiohttp.FormData()
        fields = {
            "csrfmiddlewaretoken": csrf,
            "name": "bench upload",
            "source": "file",
            "prompt_template": "Summarize: {text}",
            "model": "claude-haiku-4-5",
            "max_tokens": "16",
            "mode": "online",
            "dedup": "on",
            "action": "run",
        }
        for key, value in fields.items():
            form.add_field(key, value)
        form.add_field("file", path.read_bytes(), filename="docs.txt", content_type="text/plain")
        new = site.base_url + "/jobs/new/"
        t0 = time.time()
        async with session.post(new, data=form, allow_redirects=False, headers={"Referer": new}) as r:
            await r.read()
            t1 = time.time()
            assert r.status == 302, (r.status, (await r.text())[:2000])
            job_id = int(re.search(r"/jobs/(\d+)/", r.headers["Location"]).group(1))  # type: ignore[union-attr]
    return t0, t1, job_id


def one_run(root: Path, sim_url: str, path: Path, n: int, pg: str | None) -> dict[str, float]:
    site = Site(root, sim_url, pg)
    try:
        site.start()
        t0, t1, job_id = asyncio.run(post_upload(site, path))
        first = inserted = None
        deadline = time.monotonic() + 300
        while (first is None or inserted is None) and time.monotonic() < deadline:
            if first is None:
                (value,) = site.query(
                    "SELECT MIN(finished_at) FROM llmjobs_item WHERE job_id = %s AND status = 'succeeded'", (job_id,)
                )
                first = _utc(value)
            if (
                inserted is None
                and site.query("SELECT COUNT(*) FROM llmjobs_item WHERE job_id = %s", (job_id,))[0] >= n
            ):
                inserted = time.time()
            time.sleep(0.05)
        return {
            "response": t1 - t0,
            "first answered": (first - t0) if first else float("nan"),
            "all inserted (<=)": (inserted - t0) if inserted else float("nan"),
        }
    finally:
        site.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--pg", default=None, help="postgres://user@host:port/any (a database of its own)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    sys.path.insert(0, str(root))
    from llmjobs.simulator.server import SimulatorProcess

    path = Path(tempfile.mkdtemp(prefix="llmjobs-bench-docs-")) / "docs.txt"
    write_file(path, args.n)
    with SimulatorProcess() as sim:
        for i in range(args.runs):
            sim.reset()
            sim.configure(rpm=0, itpm=0, otpm=0, capacity=0, ttft=0.0, tps=0.0, fail_529=0.0, fail_500=0.0)
            row = one_run(root, sim.base_url, path, args.n, args.pg)
            print(
                f"{root} run {i + 1}: {args.n:,} rows ({path.stat().st_size / 1e6:.1f} MB), "
                + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()),
                flush=True,
            )


if __name__ == "__main__":
    main()
