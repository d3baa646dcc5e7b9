"""Helpers for the simulator tests (the ``sim``/``simulator`` fixtures live in tests/conftest.py)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

MODEL = "claude-haiku-4-5"
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def aclient(sim, **kwargs):
    import anthropic

    kwargs.setdefault("api_key", "test-key")
    kwargs.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(base_url=sim.base_url, **kwargs)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def raw_post(base_url: str, path: str, payload: object, headers: dict | None = None, timeout: float = 10.0):
    """POST with http.client; returns (status, headers dict, body bytes)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        conn.request("POST", path, body=body, headers=HEADERS if headers is None else headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def parse_sse(raw: bytes) -> list[tuple[str | None, str | None]]:
    """Split an SSE body into (event, data) pairs, keeping lines in order."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event = data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((event, data))
    return events


import pytest  # noqa: E402

from llmjobs.simulator.config import SimConfig  # noqa: E402

#: Settings tests/conftest.py's SIM_DEFAULTS does not restore.
_RESTORED = (
    "api_key", "seed", "answer_tokens", "max_body", "batch_seconds", "tier", "remaining_at",
    "fail_should_retry_false", "cut_stream", "bad_json", "cache_min_tokens", "invalid_output",
    "batch_error", "batch_expire", "batch_max_requests", "batch_max_bytes", "no_structured_output",
)  # fmt: skip
_RESTORE = {k: v for k, v in SimConfig().as_dict().items() if k in _RESTORED}


@pytest.fixture
def sim(sim):
    """The shared ``sim``, also restoring the settings the top-level fixture leaves alone."""
    sim.configure(**_RESTORE)
    yield sim
    sim.configure(**_RESTORE)
