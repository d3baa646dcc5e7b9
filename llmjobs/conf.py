"""llmjobs' settings, typed and read once; and where API calls go.

``llmjobs_settings()`` returns one frozen ``LLMJobsSettings``: every
``LLMJOBS_*`` Django setting, with its type, its default and what it means.
It is read from ``django.conf.settings`` on first use and cached; a
``setting_changed`` receiver clears the cache, so ``override_settings`` (and
pytest-django's ``settings`` fixture) work in tests. No other module reads an
``LLMJOBS_*`` setting itself.

``api_target()``: with ANTHROPIC_API_KEY set, calls go to the real Anthropic
API (or to ANTHROPIC_BASE_URL when that is set too). Without a key they go to
the embedded simulator at LLMJOBS_SIMULATOR_URL with a placeholder key, so the
app works out of the box on a machine with no network. The key itself is
never rendered, logged or stored: only ``describe()`` is shown to people, and
it names the target, not the key.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "SIMULATOR_PLACEHOLDER_KEY",
    "ApiTarget",
    "LLMJobsSettings",
    "api_target",
    "llmjobs_settings",
]

SIMULATOR_PLACEHOLDER_KEY = "sk-simulator-no-real-key"
PREFIX = "LLMJOBS_"

HttpTransport = Literal["aiohttp", "httpx"]


def _setting(default: Any, meaning: str) -> Any:
    """A field of ``LLMJobsSettings``: its default and what it means (shown in the README table)."""
    return field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True, slots=True)
class LLMJobsSettings:
    """Every ``LLMJOBS_*`` setting. The Django setting is the field's name, upper-cased, after ``LLMJOBS_``."""

    simulator_url: str = _setting(
        "http://127.0.0.1:8765", "Where the embedded simulator listens when no ANTHROPIC_API_KEY is set."
    )
    simulator_args: str = _setting(
        "--ttft 0.3 --tps 60", "Flags for the simulator that `make run` (`manage.py serve`) starts."
    )
    models: tuple[str, ...] = _setting(
        ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6", "claude-sonnet-4-5"),
        "Models offered in the forms.",
    )
    default_model: str = _setting("claude-haiku-4-5", "The model a form or `submit_job` picks when none is chosen.")
    http_transport: HttpTransport = _setting(  # noqa: RUF009 (a Literal of str: immutable)
        "aiohttp", "The SDK's HTTP transport: `aiohttp` (faster, less CPU) or `httpx`."
    )
    lease_seconds: float = _setting(
        30.0, "How long a claimed item stays reserved without renewal: how soon a dead runner's items are taken over."
    )
    runners_per_job: int = _setting(
        1,
        "Tasks enqueued per job: each runs on a free `db_worker` and claims chunks of the job's items with "
        "leases, so one job spreads over that many workers. Set it to the number of workers (PostgreSQL).",
    )
    fair_slice: float = _setting(
        10.0,
        "Fair shares on shared workers: a job task that has run this many seconds yields its worker (its calls in "
        "flight finish) when another user's job, or the same user's other job, has fewer workers; round-robin by "
        "user, then by job (`llmjobs/fairness.py`). 0: first in, first out.",
    )
    quota_active_jobs: int = _setting(0, "Most queued or running jobs per user when submitting a job (0: no limit).")
    quota_items_per_day: int = _setting(0, "Most items a user may submit in 24 hours (0: no limit).")
    quota_spend_per_day: float = _setting(
        0.0, "Most USD a user's items may cost in 24 hours; a new job is refused past it (0: no limit)."
    )
    db_outage_seconds: float = _setting(
        120.0,
        "How long a run keeps retrying a database that cannot be written (holding answers, sending nothing new) "
        "before it stops with a non-zero exit.",
    )
    drain_seconds: float = _setting(
        10.0,
        "On SIGTERM/SIGINT (or a cancel), how long in-flight calls may finish and be stored before they are cut off.",
    )
    max_items: int = _setting(100_000, "Most items in one job.")
    max_item_chars: int = _setting(100_000, "Largest single item, in characters of field values.")
    max_upload_bytes: int = _setting(50 * 1024 * 1024, "Largest upload, in bytes (50 MiB).")
    webhook_allow_private: bool = _setting(
        False, "Allow webhook URLs on private, loopback or link-local addresses (tests, `make run`); off in production."
    )
    api_rate_limit: int = _setting(
        120, "REST API requests per minute per user, across all web processes (0 = unlimited)."
    )
    shared_governor: bool = _setting(
        True,
        "Share the learned rate limits and the 429 pause between every process using the same API key and model "
        "family, through the database (each run takes 1/N of the limits, N the runs live on it); off: each run "
        "learns and paces alone.",
    )
    streams_per_user: int = _setting(
        20,
        "Most live streams (job progress and playground, SSE) one user may hold open at once in one "
        "server process; one more is answered 429 (0: no limit).",
    )

    @classmethod
    def from_django(cls) -> LLMJobsSettings:
        """Read every field from ``django.conf.settings`` (the default when unset), coerced to its type."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = getattr(settings, PREFIX + f.name.upper(), f.default)
            values[f.name] = _coerce(f.name, raw, f.default)
        if values["http_transport"] not in get_args(HttpTransport):
            raise ImproperlyConfigured(
                f"{PREFIX}HTTP_TRANSPORT must be one of {', '.join(get_args(HttpTransport))}, "
                f"got {values['http_transport']!r}"
            )
        values["http_transport"] = cast(HttpTransport, values["http_transport"])
        return cls(**values)

    @staticmethod
    def setting_names() -> list[str]:
        return [PREFIX + f.name.upper() for f in dataclasses.fields(LLMJobsSettings)]


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, tuple):
            if isinstance(raw, str):
                raw = raw.split(",")
            return tuple(str(v).strip() for v in raw if str(v).strip())
        if isinstance(default, bool):
            return bool(raw)
        return type(default)(raw)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{PREFIX}{name.upper()} must be a {type(default).__name__}, got {raw!r}") from None


@functools.cache
def llmjobs_settings() -> LLMJobsSettings:
    """The settings, read once (cleared when a test overrides an ``LLMJOBS_*`` setting)."""
    return LLMJobsSettings.from_django()


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        llmjobs_settings.cache_clear()


# --- where API calls go ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiTarget:
    api_key: str
    base_url: str | None
    is_simulator: bool

    def describe(self) -> str:
        if self.is_simulator:
            return f"embedded simulator at {self.base_url} (no ANTHROPIC_API_KEY set)"
        return f"Anthropic API at {self.base_url or 'https://api.anthropic.com'}"

    def __repr__(self) -> str:  # never leak the key through a repr in a log or traceback
        return f"ApiTarget(base_url={self.base_url!r}, is_simulator={self.is_simulator})"


def api_target() -> ApiTarget:
    if settings.ANTHROPIC_API_KEY:
        return ApiTarget(
            api_key=settings.ANTHROPIC_API_KEY,
            base_url=settings.ANTHROPIC_BASE_URL or None,
            is_simulator=False,
        )
    return ApiTarget(
        api_key=SIMULATOR_PLACEHOLDER_KEY,
        base_url=llmjobs_settings().simulator_url,
        is_simulator=True,
    )
