"""Bearer tokens and a per-user rate limit for the REST API."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from ..api_rate import count_request
from ..conf import llmjobs_settings
from ..tokens import token_user

__all__ = ["TokenAuth", "UserRateLimit"]


def _user_and_count(token: str) -> tuple[Any, tuple[int, float] | None]:
    """The token's user and, when the rate limit is on, this request counted against it
    (one thread hop for both)."""
    user = token_user(token)
    if user is None or not llmjobs_settings().api_rate_limit:
        return user, None
    return user, count_request(user.pk)


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>`` -> the token's user (401 otherwise). Also counts the
    request for :class:`UserRateLimit` (in the shared database, in the same thread hop)."""

    async def authenticate(self, request: HttpRequest, token: str) -> Any:
        user, counted = await sync_to_async(_user_and_count)(token.strip())
        request.llmjobs_api_rate = counted  # type: ignore[attr-defined]
        return user


class UserRateLimit(BaseThrottle):
    """At most ``LLMJOBS_API_RATE_LIMIT`` requests per user per minute, over it 429. The
    count is a fixed one-minute window in the database (``llmjobs.api_rate``), shared by
    every web process; :class:`TokenAuth` counted this request already."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: HttpRequest) -> bool:
        limit = llmjobs_settings().api_rate_limit
        counted: tuple[int, float] | None = getattr(request, "llmjobs_api_rate", None)
        if not limit or counted is None:
            return True
        count, self._wait = counted
        return count <= limit

    def wait(self) -> float | None:
        return self._wait
