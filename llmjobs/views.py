"""Thin views. Business logic lives in services (jobs.py, runner.py)."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .conf import api_target


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "llmjobs/home.html", {"api": api_target().describe()})


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and for `make run`'s own check."""
    from asgiref.sync import sync_to_async

    def db_ok() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)

    target = api_target()
    return JsonResponse(
        {
            "status": "ok",
            "database": await sync_to_async(db_ok)(),
            "api": "simulator" if target.is_simulator else "anthropic",
        }
    )
