"""The REST API's rate limit holds across web processes: two real uvicorn processes on one
database share each user's count (a deployment runs several workers)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .conftest import ROOT, free_port, stop_process_group, wait_until_listening


def _start_app(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if not wait_until_listening(proc, port):
        stop_process_group(proc, signal.SIGKILL)
        pytest.fail(f"uvicorn did not start:\n{proc.communicate()[1]}")
    return proc


@pytest.fixture
def two_apps(live_app) -> Iterator[list[int]]:
    env = dict(live_app.env, LLMJOBS_API_RATE_LIMIT="4")
    ports = [free_port(), free_port()]
    procs = []
    try:
        for port in ports:
            procs.append(_start_app(env, port))
        yield ports
    finally:
        for proc in procs:
            stop_process_group(proc, signal.SIGTERM)


def _get(port: int, token: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def test_the_api_rate_limit_is_shared_by_every_web_process(live_app, two_apps):
    live_app.manage(
        "shell", "-c", "from django.contrib.auth import get_user_model as g; g().objects.create_user('ratey')"
    )
    token = json.loads(live_app.manage("api_token", "ratey", "--json").stdout)["token"]
    # Wait for a fresh minute window if this one is about to end (the window is fixed).
    if 60 - time.time() % 60 < 10:
        time.sleep(60 - time.time() % 60 + 0.5)
    # Alternate between the two processes: a per-process count would let 8 through.
    statuses = [_get(two_apps[i % 2], token)[0] for i in range(8)]
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429], statuses
    status, headers = _get(two_apps[0], token)
    assert status == 429 and 0 < int(headers.get("retry-after", headers.get("Retry-After", "0"))) <= 60
