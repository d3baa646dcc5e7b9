"""Bearer tokens and a per-user rate limit for the REST API."""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.http import HttpRequest
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from ..conf import llmjobs_settings
from ..tokens import token_user

__all__ = ["TokenAuth", "UserRateLimit"]


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>`` -> the token's user (401 otherwise)."""

    async def authenticate(self, request: HttpRequest, token: str) -> Any:

        return await sync_to_async(token_user)(token.strip())


class UserRateLimit(BaseThrottle):
    """At most ``LLMJOBS_API_RATE_LIMIT`` requests per user per minute (a fixed window in
    Django's cache: shared by every process when the cache is); over it, 429."""

    WINDOW = 60

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: HttpRequest) -> bool:
        limit = llmjobs_settings().api_rate_limit
        user = getattr(request, "auth", None)
        if not limit or user is None:
            return True
        now = time.time()
        key = f"llmjobs:api-rate:{user.pk}:{int(now // self.WINDOW)}"
        cache.add(key, 0, self.WINDOW + 10)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, self.WINDOW + 10)
            count = 1
        self._wait = self.WINDOW - now % self.WINDOW
        return count <= limit

    def wait(self) -> float | None:
        return self._wait
