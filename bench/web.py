"""What the web layer costs: playground TTFT overhead and concurrent progress streams.

Starts the simulator and the app (``manage.py serve --no-simulator --no-worker``: one
uvicorn worker, a temporary SQLite file, ``LLMJOBS_STREAMS_PER_USER=0`` so one bench
user may open every stream), logs in over HTTP, then:

1. **Playground TTFT overhead.** For each level in ``--streams``, that many
   streamed calls kept in flight (a closed loop with staggered starts, for
   ``--seconds``), straight to the simulator and then through
   ``POST /playground/stream``; then one burst of the largest level sent at
   the same instant, each way. TTFT is the time from sending the request to
   the first text delta (the first ``event: token`` through the app). The
   overhead is the app's p50/p95 minus the simulator's own; the app's CPU
   seconds per stream (from /proc, robust to a busy machine) are reported too.
   Goal: <= 50 ms at p95 with 100 concurrent streams.
2. **Progress streams held.** Clients open ``/jobs/<id>/events`` on a running
   job whose counters another process bumps every 0.5 s, in stages up to
   ``--sse`` (0, 50, then all): the app's RSS at each stage (streams connected
   and receiving), and its CPU while holding them. After ``--hold`` seconds,
   every client must have received the latest update; the delivery lag of that
   update is reported. Then the job finishes and every stream must end with
   ``done``. Goal: 200 streams, all receiving.

Headline numbers go to ``bench.results.record`` (the summary table of ``make bench``).

    .venv/bin/python bench/web.py [--streams 1,10,100] [--seconds 10] [--sse 200] [--hold 10]

Where the app's time goes: ``--profile FILE`` records the app during the largest steady
level, with py-spy (``--gil``: the thread holding the GIL; collapsed stacks), or with
``perf`` if FILE ends in ``.data`` (``PYTHONPERFSUPPORT=1`` for Python frames).
``BENCH_ITEMS`` (default 100000) sizes the watched job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench.results import record  # noqa: E402
from llmjobs.simulator.server import SimulatorProcess  # noqa: E402

MODEL = "claude-haiku-4-5"
PASSWORD = "bench-password-123"
SIM_HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class App:
    """The app under uvicorn (one worker) on a temporary SQLite database."""

    def __init__(self, sim_url: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmjobs-bench-web-"))
        self.db = self.dir / "db.sqlite3"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}}
        self.env.update(
            DEBUG="0",
            SECRET_KEY="bench-only-secret-key-0123456789-0123456789",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=f"sqlite:///{self.db}",
            LLMJOBS_SIMULATOR_URL=sim_url,
            LOG_LEVEL="WARNING",
            LLMJOBS_STREAMS_PER_USER="0",  # one bench user holds every stream
        )
        self.proc: subprocess.Popen | None = None
        self._db: sqlite3.Connection | None = None
        self.job_id = 0

    def manage(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        if out.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self) -> None:
        self.manage("migrate", "--noinput", "-v0")
        out = self.manage(
            "shell",
            "-c",
            "import os\nfrom django.contrib.auth import get_user_model as g\n"
            "from llmjobs.jobs import job_create\n"
            f"u = g().objects.create_user('bench', password={PASSWORD!r})\n"
            "j = job_create(name='watched', template='{text}', model='claude-haiku-4-5', owner=u,"
            ' texts=[f\'item {i}\' for i in range(int(os.environ.get("BENCH_ITEMS", "100000")))])\n'
            "j.mark_running()\n"
            "from django.db import connection\n"
            "connection.cursor().execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
            "print(j.pk)",
        )
        self.job_id = int(out.strip().splitlines()[-1])
        self.log = open(self.dir / "serve.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--no-simulator", "--no-worker", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError("serve did not start:\n" + self.log.read()) from None
                time.sleep(0.05)

    profile: str = ""  # --profile: py-spy's collapsed stacks of the app during the top steady level

    def profile_start(self, key: object) -> subprocess.Popen | None:
        if not self.profile:
            return None
        assert self.proc is not None
        if self.profile.endswith(".data"):  # perf (run the bench with PYTHONPERFSUPPORT=1 for Python frames)
            command = ["perf", "record", "-F", "499", "-g", "-p", str(self.proc.pid), "-o", self.profile]
        else:
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            command = [spy, "record", "--pid", str(self.proc.pid), "--rate", "200", "--gil", "--format", "raw"]
            command += ["-o", self.profile]
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def profile_stop(self, spy: subprocess.Popen | None) -> None:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            print(f"profile: {self.profile}", file=sys.stderr)

    def rss_mb(self) -> float:
        """The app process's resident set size (uvicorn runs inside ``manage.py serve``)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the app process has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def bump(self, by: int = 1, status: str | None = None) -> int:
        """Change the job's counters from outside the app (as a worker would)."""
        if self._db is None:
            self._db = sqlite3.connect(self.db, timeout=20, isolation_level=None, check_same_thread=False)
        db = self._db
        timings = [time.perf_counter()]
        db.execute("BEGIN IMMEDIATE")
        timings.append(time.perf_counter())
        if status:
            db.execute(
                "UPDATE llmjobs_batchjob SET status=?, finished_at=CURRENT_TIMESTAMP WHERE id=?", (status, self.job_id)
            )
        db.execute("UPDATE llmjobs_batchjob SET succeeded_count=succeeded_count+? WHERE id=?", (by, self.job_id))
        value = db.execute("SELECT succeeded_count FROM llmjobs_batchjob WHERE id=?", (self.job_id,)).fetchone()[0]
        timings.append(time.perf_counter())
        db.execute("COMMIT")
        timings.append(time.perf_counter())
        if os.environ.get("BENCH_DEBUG"):
            print(
                "bump: lock %.3f update %.3f commit %.3f" % tuple(b - a for a, b in zip(timings, timings[1:])),
                file=sys.stderr,
            )
        return value


async def login(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(base_url + "/accounts/login/") as r:
        await r.read()
    csrf = next(c.value for c in session.cookie_jar if c.key == "csrftoken")
    data = {"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": csrf}
    async with session.post(
        base_url + "/accounts/login/",
        data=data,
        allow_redirects=False,
        headers={"Referer": base_url + "/accounts/login/"},
    ) as r:
        assert r.status == 302, r.status
    return next(c.value for c in session.cookie_jar if c.key == "csrftoken")


# --- 1. TTFT ----------------------------------------------------------------------------------


async def ttft_direct(session: aiohttp.ClientSession, sim_url: str, i: int, max_tokens: int) -> float:
    body = orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": max_tokens,
            "stream": True,
            "messages": [{"role": "user", "content": f"Explain topic {i} briefly."}],
        }
    )
    began = time.perf_counter()
    first = None
    async with session.post(sim_url + "/v1/messages", data=body, headers=SIM_HEADERS) as r:
        assert r.status == 200, r.status
        async for line in r.content:
            if first is None and line.startswith(b"event: content_block_delta"):
                first = time.perf_counter() - began
    assert first is not None
    return first


async def ttft_app(session: aiohttp.ClientSession, base_url: str, csrf: str, i: int, max_tokens: int) -> float:
    data = {"prompt": f"Explain topic {i} briefly.", "model": MODEL, "max_tokens": str(max_tokens)}
    headers = {"X-CSRFToken": csrf, "Referer": base_url + "/playground/", "Accept": "text/event-stream"}
    began = time.perf_counter()
    first = None
    done = False
    async with session.post(base_url + "/playground/stream", data=data, headers=headers) as r:
        assert r.status == 200, r.status
        async for line in r.content:
            if first is None and line.startswith(b"event: token"):
                first = time.perf_counter() - began
            elif line.startswith(b"event: done"):
                done = True
            elif line.startswith(b"event: error"):
                raise RuntimeError("stream error")
    assert first is not None and done
    return first


async def measure_ttft(app: App, sim_url: str, levels: list[int], seconds: float, max_tokens: int):
    """TTFTs with N calls always in flight (closed loop, staggered starts) for each N in ``levels``,
    each path in turn; then one burst of max(levels) requests sent at once, each path.
    Also the app's CPU seconds per stream through it, for each."""
    base_url = app.base_url
    connector = aiohttp.TCPConnector(limit=0)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        csrf = await login(session, base_url)
        # warm up both paths (connections, the app's shared client, imports)
        await asyncio.gather(*(ttft_direct(session, sim_url, i, max_tokens) for i in range(10)))
        await asyncio.gather(*(ttft_app(session, base_url, csrf, i, max_tokens) for i in range(10)))

        async def closed_loop(call, streams: int) -> list[float]:
            results: list[float] = []
            end = time.perf_counter() + seconds
            stagger = 2.0  # spread the first requests over this long, as real arrivals are

            async def worker(k: int) -> None:
                await asyncio.sleep(stagger * k / streams)
                i = k
                while time.perf_counter() < end:
                    results.append(await call(i))
                    i += streams

            await asyncio.gather(*(worker(k) for k in range(streams)))
            return results

        async def burst(call, streams: int) -> list[float]:
            return list(await asyncio.gather(*(call(i) for i in range(streams))))

        direct = lambda i: ttft_direct(session, sim_url, i, max_tokens)  # noqa: E731
        via_app = lambda i: ttft_app(session, base_url, csrf, i, max_tokens)  # noqa: E731
        app_proc = app
        out = {}
        cpu: dict[tuple[str, int], float] = {}

        async def measured(key: tuple[str, int], run) -> list[float]:
            spy = app_proc.profile_start(key) if key == ("steady", max(levels)) else None
            before = app_proc.cpu_s()
            values = await run
            cpu[key] = (app_proc.cpu_s() - before) / max(len(values), 1)
            app_proc.profile_stop(spy)
            return values

        for n in levels:
            out[("steady", n)] = (
                await closed_loop(direct, n),
                await measured(("steady", n), closed_loop(via_app, n)),
            )
        n = max(levels)
        out[("burst", n)] = (await burst(direct, n), await measured(("burst", n), burst(via_app, n)))
    return out, cpu


# --- 2. progress streams ---------------------------------------------------------------------


async def hold_progress_streams(app: App, clients: int, hold: float):
    connector = aiohttp.TCPConnector(limit=0)
    jar = aiohttp.CookieJar(unsafe=True)
    url = f"{app.base_url}/jobs/{app.job_id}/events"
    latest: list[int] = [0] * clients  # the last `done` count each client saw
    seen_at: list[dict[int, float]] = [{} for _ in range(clients)]
    events: list[int] = [0] * clients
    ended_done: list[bool] = [False] * clients
    connected = 0

    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)
    ) as session:
        await login(session, app.base_url)

        async def client(k: int) -> None:
            nonlocal connected
            async with session.get(url) as r:
                assert r.status == 200, r.status
                connected += 1
                name = None
                async for line in r.content:
                    if line.startswith(b"event: "):
                        name = line[7:].strip().decode()
                    elif line.startswith(b"data: ") and name:
                        data = orjson.loads(line[6:])
                        events[k] += 1
                        done = data.get("done", 0)
                        latest[k] = done
                        seen_at[k].setdefault(done, time.perf_counter())
                        if name == "done":
                            ended_done[k] = True

        async def connected_and_settled(n: int) -> None:
            deadline = time.perf_counter() + 60
            while (connected < n or sum(1 for e in events if e) < n) and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # let the allocator settle before reading RSS

        rss = {0: app.rss_mb()}
        tasks: list[asyncio.Task] = []
        began = time.perf_counter()
        for stage in sorted({min(50, clients), clients}):
            tasks += [asyncio.create_task(client(k)) for k in range(len(tasks), stage)]
            await connected_and_settled(stage)
            rss[stage] = app.rss_mb()
        connect_s = time.perf_counter() - began
        cpu_before, cpu_began = app.cpu_s(), time.perf_counter()
        bumps: list[tuple[int, float]] = []
        end = time.perf_counter() + hold
        while time.perf_counter() < end:
            value = await asyncio.to_thread(app.bump, 1)
            bumps.append((value, time.perf_counter()))
            await asyncio.sleep(0.5)
        cpu_pct = 100 * (app.cpu_s() - cpu_before) / (time.perf_counter() - cpu_began)
        last_value, last_at = bumps[-1]
        await asyncio.sleep(2.0)  # let the last update reach everyone
        receiving = sum(1 for k in range(clients) if latest[k] >= last_value)
        lags = [seen_at[k][last_value] - last_at for k in range(clients) if last_value in seen_at[k]]
        await asyncio.to_thread(app.bump, 0, "succeeded")
        await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients,
        "connected": connected,
        "connect_s": connect_s,
        "receiving": receiving,
        "lag_p50": pct(lags, 0.5),
        "lag_p95": pct(lags, 0.95),
        "events_min": min(events),
        "ended_done": sum(ended_done),
        "updates": len(bumps),
        "rss": rss,
        "cpu_pct": cpu_pct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,10,100", help="concurrent playground streams (comma-separated)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of steady load per path and level")
    parser.add_argument("--ttft", type=float, default=0.2, help="the simulator's TTFT (jittered +/-50%%)")
    parser.add_argument("--tps", type=float, default=60.0, help="the simulator's output tokens per second")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--sse", type=int, default=200, help="concurrent progress streams")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold the progress streams")
    parser.add_argument(
        "--profile",
        default="",
        help="profile the app during the top steady level: py-spy collapsed stacks, or perf if it ends in .data",
    )
    args = parser.parse_args()

    with SimulatorProcess("--ttft", str(args.ttft), "--tps", str(args.tps)) as sim:
        sim.configure(rpm=0, itpm=0, otpm=0, capacity=0, fail_500=0.0, fail_529=0.0, hang=0.0, drop_stream=0.0)
        app = App(sim.base_url)
        app.profile = args.profile
        try:
            app.start()
            levels = [int(n) for n in args.streams.split(",")]
            ttft, cpu = asyncio.run(measure_ttft(app, sim.base_url, levels, args.seconds, args.max_tokens))
            held = asyncio.run(hold_progress_streams(app, args.sse, args.hold)) if args.sse > 0 else None
        finally:
            app.stop()

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    if held is not None:  # --sse 0: the playground rows only
        rss = held["rss"]
        growth = rss[max(rss)] - rss[0]
        record(
            "web",
            f"RSS growth, {held['clients']} progress streams open",
            growth,
            "MB",
            reference=f"idle app {rss[0]:.0f} MB",
            ratio=rss[max(rss)] / rss[0],
        )
        record("web", f"app CPU holding {held['clients']} progress streams", held["cpu_pct"], "% core")
        record(
            "web",
            f"progress streams receiving the last update (of {held['clients']})",
            held["receiving"],
            "streams",
            goal=f"= {held['clients']}",
            met=held["receiving"] == held["clients"],
        )
    rows = [
        (
            "setup",
            f"1 uvicorn worker, SQLite, {os.cpu_count()} CPUs shared by app, simulator and clients; "
            f"simulator ttft {args.ttft:g}s +/-50%, {args.tps:g} tokens/s, max_tokens {args.max_tokens}",
            "",
        )
    ]
    top = max(levels)
    for (mode, n), (direct, through) in ttft.items():
        label = f"{n} always in flight" if mode == "steady" else f"{n} sent at one instant"
        d50, d95, a50, a95 = pct(direct, 0.5), pct(direct, 0.95), pct(through, 0.5), pct(through, 0.95)
        goal = "<= 50 ms" if n == top else ""
        metric = f"playground TTFT p95 overhead, {label}"
        record(
            "web",
            metric,
            (a95 - d95) * 1000,
            "ms",
            reference=f"simulator direct p95 {d95 * 1000:.0f} ms",
            ratio=a95 / d95,
            goal=goal,
            met=(a95 - d95 <= 0.050) if goal else None,
        )
        record("web", f"app CPU per playground stream, {label}", cpu[(mode, n)] * 1000, "ms")
        rows += [
            (
                f"TTFT simulator direct / via playground ({label})",
                f"p50 {ms(d50)} / {ms(a50)}; p95 {ms(d95)} / {ms(a95)}",
                f"n={len(direct)} / {len(through)}",
            ),
            (
                f"  playground overhead ({label})",
                f"p50 {ms(a50 - d50)} / p95 {ms(a95 - d95)}",
                "goal <= 50 ms at p95: " + ("met" if a95 - d95 <= 0.050 else "NOT met"),
            ),
            (f"  app CPU per stream ({label})", f"{cpu[(mode, n)] * 1000:.1f} ms", ""),
        ]
    if held is not None:
        rows += [
            (
                f"progress streams held ({held['clients']} clients, {args.hold:g}s, {held['updates']} updates)",
                f"{held['connected']} connected in {held['connect_s']:.2f}s, {held['receiving']} got the last update",
                "goal 200 all receiving: "
                + ("met" if held["receiving"] >= 200 and held["receiving"] == held["clients"] else "NOT met"),
            ),
            (
                "progress update delivery lag (tick 0.5 s)",
                f"p50 {ms(held['lag_p50'])} / p95 {ms(held['lag_p95'])}",
                f"fewest events per client: {held['events_min']}",
            ),
            ("streams ended with `done` when the job finished", f"{held['ended_done']} / {held['clients']}", ""),
            (
                "app RSS with 0 / 50 / 200 progress streams open",
                " / ".join(f"{mb:.0f} MB" for mb in held["rss"].values()),
                f"growth {growth:.0f} MB for {held['clients']} streams ({growth / held['clients'] * 1024:.0f} KB each)",
            ),
            (f"app CPU holding {held['clients']} progress streams", f"{held['cpu_pct']:.0f}% of a core", ""),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(line)
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print(line)


if __name__ == "__main__":
    main()
