"""The skeleton: settings from the environment, pages answer, `serve` runs everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anthropic
import pytest
from django.test import override_settings

from llmjobs.conf import SIMULATOR_PLACEHOLDER_KEY, api_target

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


def test_secret_key_is_required_outside_debug():
    code = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='project.settings'; django.setup()"
    result = run_python(code)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    assert run_python(code, DEBUG="1").returncode == 0
    assert run_python(code, SECRET_KEY="x" * 50).returncode == 0


def test_database_url_is_read_from_the_environment():
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='project.settings'; django.setup();"
        "from django.conf import settings; d=settings.DATABASES['default'];"
        "print(d['ENGINE'], d['NAME'], d['HOST'], d['PORT'])"
    )
    result = run_python(code, DEBUG="1", DATABASE_URL="postgres://postgres@127.0.0.1:5432/test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "test", "127.0.0.1", "5432"]
    default = run_python(code, DEBUG="1")
    assert default.stdout.split()[0] == "django.db.backends.sqlite3"


@override_settings(ANTHROPIC_API_KEY="", LLMJOBS_SIMULATOR_URL="http://127.0.0.1:9999")
def test_without_a_key_calls_go_to_the_simulator():
    target = api_target()
    assert target.is_simulator
    assert target.base_url == "http://127.0.0.1:9999"
    assert target.api_key == SIMULATOR_PLACEHOLDER_KEY


@override_settings(ANTHROPIC_API_KEY="sk-ant-secret-123", ANTHROPIC_BASE_URL="")
def test_with_a_key_calls_go_to_the_real_api_and_the_key_is_never_shown(client, db):
    target = api_target()
    assert not target.is_simulator and target.base_url is None
    assert "sk-ant-secret-123" not in repr(target) + target.describe()
    page = client.get("/")
    assert page.status_code == 200
    assert b"sk-ant-secret-123" not in page.content
    assert b"Anthropic API" not in page.content  # anonymous pages don't name the API target
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_user("reader"))
    page = client.get("/")
    assert b"sk-ant-secret-123" not in page.content
    assert b"Anthropic API" in page.content


@pytest.mark.django_db
def test_home_and_healthz_answer(client):
    assert client.get("/").status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["database"] is True


def test_serve_runs_app_and_simulator_and_ctrl_c_stops_both(tmp_path):
    """What `make run` does: migrate, then `manage.py serve` (uvicorn + simulator)."""
    app_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "SECRET_KEY"}}
    env.update(
        DEBUG="1",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        LLMJOBS_SIMULATOR_URL=f"http://127.0.0.1:{sim_port}",
        LLMJOBS_SIMULATOR_ARGS="--ttft 0 --tps 0",
    )
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    proc = subprocess.Popen(
        [*manage, "serve", "--port", str(app_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        body = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/healthz", timeout=1) as r:
                    body = r.read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "serve never answered"
        assert b'"status": "ok"' in body and b"simulator" not in body  # /healthz tells nothing of the API target
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/admin/login/", timeout=5) as r:
            assert r.status == 200
        # The simulator it started answers the real SDK.
        with anthropic.Anthropic(base_url=f"http://127.0.0.1:{sim_port}", api_key="k", max_retries=0) as sdk:
            message = sdk.messages.create(
                model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
            )
        assert message.content[0].text
        # Ctrl-C (SIGINT to the whole process group, as a terminal does) stops everything.
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        assert f"http://127.0.0.1:{app_port}/" in output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/_sim/stats", timeout=1)
