"""Shared fixtures.

The simulator runs as a real uvicorn server in its own process, on a free
port, once per test session. Tests talk to it with the real anthropic SDK
over TCP. ``sim`` hands each test a freshly reset simulator with the default
(instant, unlimited, fault-free) configuration.
"""

from __future__ import annotations

import pytest

from llmjobs.simulator.server import SimulatorProcess

# Instant, unlimited, fault-free: tests change what they need with sim.configure().
SIM_DEFAULTS: dict = {
    "rpm": 0,
    "itpm": 0,
    "otpm": 0,
    "burst": 60.0,
    "capacity": 0,
    "ttft": 0.0,
    "tps": 0.0,
    "fail_500": 0.0,
    "fail_529": 0.0,
    "hang": 0.0,
    "drop_stream": 0.0,
    "ping_interval": 5.0,
    "api_key": None,
    "answer_tokens": 0,
    "seed": 0,
    "max_body": 32 * 1024 * 1024,
    "batch_seconds": 0.0,
    "tier": 0,
    "remaining_at": "refund",
    "fail_should_retry_false": 0.0,
    "cut_stream": 0.0,
    "bad_json": 0.0,
    "cache_min_tokens": -1,
    "invalid_output": 0.0,
    "batch_error": 0.0,
    "batch_expire": 0.0,
    "batch_max_requests": 100000,
    "batch_max_bytes": 268435456,
    "no_structured_output": "",
}


@pytest.fixture(scope="session", autouse=True)
def _drop_database_templates():
    """The migrated templates tests/dbtemplate.py made in this process go at the session's end."""
    yield
    from tests import dbtemplate

    dbtemplate.drop_templates()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test databases, and before they are dropped: on PostgreSQL, any
    connection still open to them (a test's server, filler or loader thread whose
    connection was not yet collected) is closed and named on stderr, instead of the
    DROP DATABASE failing with "is being accessed by other users" at the session's end."""
    yield
    import sys

    from django.db import connections

    with django_db_blocker.unblock():
        for conn in connections.all():
            if conn.vendor != "postgresql":
                continue
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pid, application_name, state, left(query, 80), pg_terminate_backend(pid) "
                    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                for pid, app, state, query, _ in cursor.fetchall():
                    print(
                        f"tests: closed a stray connection to the test database: pid {pid} {app!r} {state}: {query}",
                        file=sys.stderr,
                    )
        connections.close_all()


@pytest.fixture(scope="session")
def simulator():
    with SimulatorProcess() as server:
        yield server


@pytest.fixture
def sim(simulator):
    simulator.reset()
    simulator.configure(**SIM_DEFAULTS)
    yield simulator
    simulator.reset()


@pytest.fixture
def api(sim, settings):
    """The app's API calls go to the session's simulator (no key: the embedded default)."""
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    return sim


@pytest.fixture
def close_async_connections():
    """Close what async views and tests left open: the user-loading threads' kept-open
    connections, and the one of asgiref's shared sync thread (``sync_to_async`` outside a
    request), so that PostgreSQL can drop the test database at the end."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from llmjobs.web.userload import user_loader

    user_loader.close()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
