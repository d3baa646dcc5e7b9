"""Production settings from the environment, `check --deploy`, and the Content-Security-Policy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from .test_views import make_job

ROOT = Path(__file__).resolve().parents[1]

# The production environment the README's "Deploying" section documents.
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "SECRET_KEY": "k7Qw-9zX2pL5vN8rT1yU4iO6aS3dF0gH_jK7lZ2xC5vB8nM1qW4eR6tY9uI3oP0",
    "ALLOWED_HOSTS": "jobs.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://jobs.example.com",
    "LLMJOBS_HTTPS": "1",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    env.update(PRODUCTION_ENV)
    env.update(extra)
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_documented_production_env(tmp_path):
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_the_https_settings(tmp_path):
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    del env["LLMJOBS_HTTPS"]
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout, warning


def _settings_in(env: dict[str, str]) -> dict:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s;"
        "print(json.dumps({k: getattr(s, k, None) for k in ("
        "'SECURE_SSL_REDIRECT', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS',"
        "'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD', 'SECURE_PROXY_SSL_HEADER', 'CSRF_TRUSTED_ORIGINS',"
        "'AXES_FAILURE_LIMIT', 'AXES_ENABLED')}, default=str))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_switches_come_from_the_environment():
    on = _settings_in(_env())
    assert on["SECURE_SSL_REDIRECT"] and on["SESSION_COOKIE_SECURE"] and on["CSRF_COOKIE_SECURE"]
    assert on["SECURE_HSTS_SECONDS"] == 31536000 and on["SECURE_HSTS_INCLUDE_SUBDOMAINS"] and on["SECURE_HSTS_PRELOAD"]
    assert on["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert on["CSRF_TRUSTED_ORIGINS"] == ["https://jobs.example.com"]
    assert on["AXES_FAILURE_LIMIT"] == 5 and on["AXES_ENABLED"]
    # Each switch can be set on its own.
    custom = _settings_in(
        _env(SECURE_HSTS_SECONDS="3600", SECURE_HSTS_PRELOAD="0", SECURE_SSL_REDIRECT="0", AXES_FAILURE_LIMIT="3")
    )
    assert custom["SECURE_HSTS_SECONDS"] == 3600 and not custom["SECURE_HSTS_PRELOAD"]
    assert not custom["SECURE_SSL_REDIRECT"] and custom["SESSION_COOKIE_SECURE"]
    assert custom["AXES_FAILURE_LIMIT"] == 3
    # Plain HTTP development (make run) keeps them off.
    dev = {k: v for k, v in _env().items() if k not in {"LLMJOBS_HTTPS", "SECURE_PROXY_SSL_HEADER"}}
    off = _settings_in(dev)
    assert not off["SECURE_SSL_REDIRECT"] and not off["SESSION_COOKIE_SECURE"] and off["SECURE_HSTS_SECONDS"] == 0
    assert off["SECURE_PROXY_SSL_HEADER"] is None


# --- Content-Security-Policy, nosniff, no framing ------------------------------------------

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)


@pytest.fixture
def root(client, db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return user


def test_every_page_has_a_strict_csp_and_no_inline_script(client, root):
    job = make_job(root, n=2)
    pages = [
        reverse("llmjobs:home"),
        reverse("llmjobs:job_list"),
        reverse("llmjobs:job_new"),
        reverse("llmjobs:job_detail", args=[job.pk]),
        reverse("llmjobs:playground"),
        reverse("admin:index"),
        reverse("admin:llmjobs_batchjob_changelist"),
        reverse("admin:llmjobs_batchjob_change", args=[job.pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        csp = response["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, url
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], url
        assert response["X-Content-Type-Options"] == "nosniff" and response["X-Frame-Options"] == "DENY", url
        html = response.content.decode()
        assert not INLINE_SCRIPT.search(html), (url, INLINE_SCRIPT.search(html))
        assert not INLINE_HANDLER.search(re.sub(r"<textarea.*?</textarea>", "", html, flags=re.S)), url
    client.logout()
    assert "frame-ancestors 'none'" in client.get(reverse("login"))["Content-Security-Policy"]


def test_the_job_form_script_is_a_static_file(client, root):
    html = client.get(reverse("llmjobs:job_new")).content.decode()
    assert 'src="/static/llmjobs/job_form.js"' in html
    assert (ROOT / "llmjobs/static/llmjobs/job_form.js").read_text().count("src-paste") == 1
