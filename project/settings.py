"""Settings for llmjobs, read from the environment.

Every knob has a safe default for the embedded mode (SQLite + the built-in
Anthropic simulator). Production sets DATABASE_URL, ANTHROPIC_API_KEY,
SECRET_KEY and ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY in the environment, "
            "or set DEBUG=1 for local development (make run does this)."
        )
    SECRET_KEY = "django-insecure-dev-only-llmjobs-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "ninja",  # the REST API's docs page, served from local static files (no CDN)
    "llmjobs",
]

# Django's usual stack, as async-native subclasses (llmjobs/web/middleware.py): under ASGI,
# Django's own classes run every process_request/process_response through one shared
# sync thread, which queued the streaming views behind each other (issue 17). Same
# behaviour, same order; a new middleware here must be async-capable too
# (tests/test_streams.py checks that no request hops to a thread in the middleware).
MIDDLEWARE = [
    "llmjobs.web.middleware.AsyncSecurityMiddleware",
    "llmjobs.web.middleware.AsyncSessionMiddleware",
    "llmjobs.web.middleware.AsyncCommonMiddleware",
    "llmjobs.web.middleware.AsyncCsrfViewMiddleware",
    "llmjobs.web.middleware.AsyncAuthenticationMiddleware",
    "llmjobs.web.middleware.AsyncMessageMiddleware",
    "llmjobs.web.middleware.AsyncXFrameOptionsMiddleware",
]
# Django's deploy checks look for its own dotted paths: these three would say "missing" (and
# the checks that depend on them would be skipped). llmjobs.web.middleware.check_async_middleware
# does both jobs for the subclasses instead (llmjobs.W001-W003 and the skipped ones).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (progress streams) run while the writer thread commits.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            # Writers take the lock up front instead of failing to upgrade a read lock.
            "transaction_mode": "IMMEDIATE",
        }
    )

TASKS = {
    "default": {
        "BACKEND": os.environ.get("LLMJOBS_TASK_BACKEND", "django_tasks_db.DatabaseBackend"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # The SDK's HTTP client logs every request at INFO: far too much for a batch.
    "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpx2", "httpcore", "httpcore2")},
}

# --- llmjobs -----------------------------------------------------------------
# Every LLMJOBS_* setting, its type, default and meaning: llmjobs/conf.py
# (LLMJobsSettings). The app reads them only through llmjobs_settings().
# With ANTHROPIC_API_KEY set, calls go to the real API (or ANTHROPIC_BASE_URL).
# Without it, they go to the embedded simulator at LLMJOBS_SIMULATOR_URL,
# which `make run` / `manage.py serve` start for you.
ANTHROPIC_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
ANTHROPIC_BASE_URL = os.environ.get("ANTHROPIC_BASE_URL", "")
LLMJOBS_SIMULATOR_URL = os.environ.get("LLMJOBS_SIMULATOR_URL", "http://127.0.0.1:8765")
LLMJOBS_SIMULATOR_ARGS = os.environ.get("LLMJOBS_SIMULATOR_ARGS", "--ttft 0.3 --tps 60")
LLMJOBS_DEFAULT_MODEL = os.environ.get("LLMJOBS_DEFAULT_MODEL", "claude-haiku-4-5")
LLMJOBS_MODELS = env_list("LLMJOBS_MODELS", "claude-haiku-4-5,claude-sonnet-4-6,claude-opus-4-6,claude-sonnet-4-5")
LLMJOBS_HTTP_TRANSPORT = os.environ.get("LLMJOBS_HTTP_TRANSPORT", "aiohttp")  # or "httpx"
# Seconds an item stays claimed without renewal: how soon a crashed runner's
# items can be taken over by a new run.
LLMJOBS_LEASE_SECONDS = float(os.environ.get("LLMJOBS_LEASE_SECONDS", "30"))
# Tasks per job: one job spreads over this many db_worker processes (issue 12).
LLMJOBS_RUNNERS_PER_JOB = int(os.environ.get("LLMJOBS_RUNNERS_PER_JOB", "1"))
# Per-user quotas on submit (0: no limit), issue 12.
LLMJOBS_QUOTA_ACTIVE_JOBS = int(os.environ.get("LLMJOBS_QUOTA_ACTIVE_JOBS", "0"))
LLMJOBS_QUOTA_ITEMS_PER_DAY = int(os.environ.get("LLMJOBS_QUOTA_ITEMS_PER_DAY", "0"))
LLMJOBS_QUOTA_SPEND_PER_DAY = float(os.environ.get("LLMJOBS_QUOTA_SPEND_PER_DAY", "0"))  # USD
# Fair shares on shared workers: a job task yields its worker after this many seconds
# when another user's (or job's) work waits (llmjobs/fairness.py); 0 = first in, first out.
LLMJOBS_FAIR_SLICE = float(os.environ.get("LLMJOBS_FAIR_SLICE", "10"))
LLMJOBS_MAX_ITEMS = int(os.environ.get("LLMJOBS_MAX_ITEMS", "100000"))
LLMJOBS_MAX_ITEM_CHARS = int(os.environ.get("LLMJOBS_MAX_ITEM_CHARS", "100000"))
LLMJOBS_MAX_UPLOAD_BYTES = int(os.environ.get("LLMJOBS_MAX_UPLOAD_BYTES", str(50 * 1024 * 1024)))
# A run stops (non-zero exit, one line) when the database can't be written for this long.
LLMJOBS_DB_OUTAGE_SECONDS = float(os.environ.get("LLMJOBS_DB_OUTAGE_SECONDS", "120"))
# On SIGTERM/SIGINT, calls in flight may finish for this long; their answers are stored.
LLMJOBS_DRAIN_SECONDS = float(os.environ.get("LLMJOBS_DRAIN_SECONDS", "10"))
LLMJOBS_WEBHOOK_ALLOW_PRIVATE = os.environ.get("LLMJOBS_WEBHOOK_ALLOW_PRIVATE", "") not in ("", "0", "false", "no")
LLMJOBS_API_RATE_LIMIT = int(os.environ.get("LLMJOBS_API_RATE_LIMIT", "120"))
# One org-wide rate limit shared by every process using the same key + model family (docs/deploy.md).
LLMJOBS_SHARED_GOVERNOR = os.environ.get("LLMJOBS_SHARED_GOVERNOR", "1") not in ("", "0", "false", "no")
# Open SSE streams (progress + playground) per user per server process (0: no limit), issue 17.
LLMJOBS_STREAMS_PER_USER = int(os.environ.get("LLMJOBS_STREAMS_PER_USER", "20"))

# --- security / deploy -------------------------------------------------------
# Production switches, all from the environment (see the README's "Deploying"
# section). LLMJOBS_HTTPS=1 turns on every HTTPS setting at once; each one can
# still be set on its own. Off by default so that `make run` works over plain
# HTTP on localhost.
from datetime import timedelta  # noqa: E402

from django.utils.csp import CSP  # noqa: E402

HTTPS = env_bool("LLMJOBS_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600) if HTTPS else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", HTTPS)
# Behind a TLS-terminating proxy: the header it sets, e.g. "X-Forwarded-Proto"
# (meaning "X-Forwarded-Proto: https"). Only set it when the proxy always
# overwrites that header, or clients could claim HTTPS.
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_header:
    _name, _, _value = _proxy_header.partition(":")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip() or "https")
# CSRF_TRUSTED_ORIGINS is read above (comma-separated, with scheme: https://jobs.example.com).
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (Django's own middleware): scripts only from our
# static files, no inline script anywhere, no framing. Inline *style attributes*
# (progress bars) are allowed; they cannot run code.
MIDDLEWARE.insert(
    MIDDLEWARE.index("llmjobs.web.middleware.AsyncSecurityMiddleware") + 1,
    "llmjobs.web.middleware.AsyncContentSecurityPolicyMiddleware",
)
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# Login throttling (django-axes): AXES_FAILURE_LIMIT failed logins for one
# username from one IP address lock that pair out for AXES_COOLOFF_MINUTES.
# Covers the site's login and the admin's (both go through authenticate()).
# Behind a proxy, run uvicorn with --proxy-headers so REMOTE_ADDR is the client.
INSTALLED_APPS += ["axes"]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out username+IP
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = env_bool("AXES_VERBOSE", False)  # no banner on every manage.py run; lockouts are still logged
_loggers = LOGGING["loggers"]
assert isinstance(_loggers, dict)
_loggers["axes"] = {"level": "WARNING"}  # lockouts (warnings) are logged, every login (info) is not
