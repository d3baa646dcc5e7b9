"""The REST API's per-user rate limit, counted in the shared database (``ApiRateCount``).

Every web process counts a user's requests in the same row, so ``LLMJOBS_API_RATE_LIMIT``
holds for the whole site, not per process (a deployment runs several uvicorn workers).
A fixed window of one minute; one ``INSERT ... ON CONFLICT ... RETURNING`` per request
(SQLite >= 3.35 and PostgreSQL), run in the same thread hop as the token lookup. A
module of its own, imported by ``apps.LlmjobsConfig.import_models`` next to ``models``.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection, models

__all__ = ["WINDOW", "ApiRateCount", "count_request"]

WINDOW = 60  # seconds


class ApiRateCount(models.Model):
    """How many API requests a user made in one window (``minute``: epoch seconds // WINDOW)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    minute = models.BigIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "minute"], name="llmjobs_apiratecount_user_minute")]

    def __str__(self) -> str:
        return f"{self.count} API request(s) of user {self.user_id} in window {self.minute}"


def count_request(user_id: int, now: float | None = None) -> tuple[int, float]:
    """Count one request of ``user_id``: (requests in this window so far, seconds until it ends).

    The first request of a window also drops the user's older windows, so the table
    holds at most one row per active user.
    """
    now = time.time() if now is None else now
    minute = int(now // WINDOW)
    table = connection.ops.quote_name(ApiRateCount._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (user_id, minute, count) VALUES (%s, %s, 1) "
            f"ON CONFLICT (user_id, minute) DO UPDATE SET count = {table}.count + 1 RETURNING count",
            [user_id, minute],
        )
        (count,) = cursor.fetchone()
        if count == 1:
            cursor.execute(f"DELETE FROM {table} WHERE user_id = %s AND minute < %s", [user_id, minute])
    return count, WINDOW - now % WINDOW
