"""The detailed health view, for staff only.

``/healthz`` (in the views) tells a load balancer "ok" and whether the
database answers, and nothing about the configuration. This view adds what an
operator needs, behind the admin login: where API calls go, the database
engine, the task backend, the deploy switches and the versions.
"""

from __future__ import annotations

import platform

import django
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from .conf import api_target

__all__ = ["healthz_details"]


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))
    except Exception:  # a health view reports, it does not raise
        return False


@require_GET
@staff_member_required
def healthz_details(request: HttpRequest) -> JsonResponse:
    import anthropic

    target = api_target()
    database_ok = _database_ok()
    return JsonResponse(
        {
            "status": "ok" if database_ok else "degraded",
            "database": {"ok": database_ok, "engine": connection.vendor},
            "api": {"target": target.describe(), "simulator": target.is_simulator},
            "tasks": {"backend": settings.TASKS["default"]["BACKEND"]},
            "deploy": {
                "debug": settings.DEBUG,
                "https_redirect": settings.SECURE_SSL_REDIRECT,
                "secure_cookies": settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE,
                "hsts_seconds": settings.SECURE_HSTS_SECONDS,
                "login_throttling": bool(settings.AXES_ENABLED),
            },
            "versions": {
                "python": platform.python_version(),
                "django": django.get_version(),
                "anthropic": anthropic.__version__,
            },
        },
        status=200 if database_ok else 503,
    )
