"""End-to-end fixtures: the real app under uvicorn, a real worker, a real browser.

``live_app`` runs ``manage.py serve --no-simulator --no-worker`` in a subprocess on a free
port, on its own SQLite file, against the session's simulator. Users are
made with ``manage.py``; jobs go through the UI and are processed by
``manage.py db_worker --batch``, as a user's worker would. The browser is
Debian's ``chromium`` driven by Playwright (sync API), headless.

Set ``LLMJOBS_SCREENSHOTS=docs`` to save the README's screenshots there.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "e2e-password-123"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_listening(proc: subprocess.Popen, port: int, timeout: float = 30.0) -> bool:
    """Wait until something accepts connections on ``port``; False if ``proc`` exited first
    or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with ``start_new_session``),
    and SIGKILL it if it has not exited 10 s later."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class LiveApp:
    base_url: str
    host: str
    port: int
    env: dict[str, str]

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def run_worker(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """What a user's worker does, once: process every queued task, then exit."""
        return self.manage("db_worker", "--batch", "--no-startup-delay", "--no-reload", timeout=timeout)

    def start_worker(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--batch", "--no-startup-delay", "--no-reload"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture(scope="session")
def live_app(simulator):
    workdir = Path(tempfile.mkdtemp(prefix="llmjobs-e2e-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "DEBUG"}}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY="e2e-only-secret-key-not-for-production-0123456789",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
        LLMJOBS_SIMULATOR_URL=simulator.base_url,
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    app = LiveApp(base_url=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port, env=env)
    app.manage("migrate", "--noinput", "-v0")
    app.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model as g; U = g();"
        f"U.objects.create_superuser('admin', 'admin@example.com', {PASSWORD!r});"
        f"U.objects.create_user('alice', password={PASSWORD!r})",
    )
    log = open(workdir / "serve.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve",
            "--no-simulator",
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if not wait_until_listening(proc, port):
            log.seek(0)
            pytest.fail(f"manage.py serve did not start:\n{log.read()}")
        yield app
    finally:
        stop_process_group(proc, signal.SIGINT)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="package")
def browser():
    # Package scope: Playwright's sync API runs its own event loop in this thread,
    # so it must be gone before the asyncio tests of other packages run.
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop(None)


@pytest.fixture
def page(browser, live_app):
    context = browser.new_context(
        base_url=live_app.base_url, accept_downloads=True, viewport={"width": 1200, "height": 900}
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def login(page, username: str, password: str = PASSWORD, next_url: str = "/jobs/") -> None:
    page.goto(f"/accounts/login/?next={urllib.parse.quote(next_url)}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{next_url}")


def screenshot(page, name: str, full_page: bool = False) -> None:
    target = os.environ.get("LLMJOBS_SCREENSHOTS")
    if target:
        path = (ROOT / target / name) if not os.path.isabs(target) else Path(target) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=full_page)


# --- a tiny HTTP session with cookies, for tests that close connections on purpose --------


class HttpSession:
    """Logged-in HTTP/1.1 to the live app over plain sockets (http.client)."""

    def __init__(self, app: LiveApp) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}
        self.location: str | None = None

    def _cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _remember(self, response: http.client.HTTPResponse) -> None:
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.app.host, self.app.port, timeout=30)
        try:
            body = urllib.parse.urlencode(form) if form is not None else None
            headers = {"Cookie": self._cookie_header(), "Referer": self.app.base_url + path}
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            self._remember(response)
            self.location = response.getheader("Location")
            return response.status, response.read()
        finally:
            conn.close()

    def login(self, username: str, password: str = PASSWORD) -> None:
        self.request("GET", "/accounts/login/")
        status, _ = self.request(
            "POST",
            "/accounts/login/",
            {
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.cookies["csrftoken"],
            },
        )
        assert status == 302 and "sessionid" in self.cookies, status

    def open_stream(self, path: str, form: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """POST and return the open connection and response (the caller reads and closes)."""
        conn = http.client.HTTPConnection(self.app.host, self.app.port, timeout=30)
        body = urllib.parse.urlencode(form)
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Cookie": self._cookie_header(),
                "Content-Type": "application/x-www-form-urlencoded",
                "X-CSRFToken": self.cookies["csrftoken"],
                "Referer": self.app.base_url + path,
                "Accept": "text/event-stream",
            },
        )
        return conn, conn.getresponse()


def read_event(response: http.client.HTTPResponse) -> tuple[str, dict]:
    """Read one SSE event from an open response."""
    name, data = None, None
    while True:
        line = response.readline().decode()
        if line == "":
            raise EOFError("stream ended")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and name:
            return name, data or {}
