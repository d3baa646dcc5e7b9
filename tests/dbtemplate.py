"""A freshly migrated project database, made once per test process and copied.

Tests that run `manage.py` in subprocesses (tests/test_commands.py, tests/fault_site.py)
each need a database of their own. Running `manage.py migrate` for every one costs a
Django start plus every migration (seconds each on a busy 2-core machine, twenty-odd
times a run). Instead the first site of a process migrates a template once, with the
real `manage.py migrate`, and every site after it gets a copy: the same file for
SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL. Tests that are about `migrate`
itself (tests/test_cli_progress.py, tests/test_project.py, the e2e app) still run it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_sqlite_template: Path | None = None
_pg_templates: dict[str, tuple[str, str]] = {}  # server URL (no database) -> (admin URL, template name)


def _migrate(env: dict[str, str], database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"manage.py migrate failed:\n{result.stdout}\n{result.stderr}")


def sqlite_database(path: Path, env: dict[str, str]) -> None:
    """Put a migrated SQLite database at ``path`` (a copy of this process's template)."""
    global _sqlite_template
    if _sqlite_template is None:
        folder = Path(tempfile.mkdtemp(prefix="llmjobs-dbtemplate-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "template.sqlite3"
        _migrate(env, f"sqlite:///{template}")
        _sqlite_template = template
    # migrate exited: its last connection checkpointed the WAL into the main file.
    for suffix in ("", "-wal"):
        source = Path(str(_sqlite_template) + suffix)
        if source.exists():
            shutil.copyfile(source, Path(str(path) + suffix))


def postgres_database(base_url: str, name: str, env: dict[str, str]) -> str:
    """Create database ``name`` on the server of ``base_url`` as a copy of this process's
    migrated template; returns its URL. The template is dropped when the process exits."""
    import psycopg

    server = base_url.rsplit("/", 1)[0]
    if server in _pg_templates:
        template = _pg_templates[server][1]
    else:
        template = f"llmjobs_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        _admin(base_url, f"CREATE DATABASE {template}")
        atexit.register(_admin, base_url, f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
        _migrate(env, f"{server}/{template}")
        _pg_templates[server] = (base_url, template)
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return f"{server}/{name}"


def drop_templates() -> None:
    """Drop this process's template databases now (the end of a pytest session; atexit is
    the fallback for other callers, such as the benchmarks)."""
    global _sqlite_template
    for server, (admin_url, template) in list(_pg_templates.items()):
        _admin(admin_url, f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
        del _pg_templates[server]
    if _sqlite_template is not None:
        shutil.rmtree(_sqlite_template.parent, ignore_errors=True)
        _sqlite_template = None


def _admin(base_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql)
