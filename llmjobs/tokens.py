"""REST API tokens: made once, stored as their SHA-256 only, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.utils import timezone

from .models import ApiToken

__all__ = ["TOKEN_PREFIX", "token_create", "token_hash", "token_user"]

TOKEN_PREFIX = "llmj_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_create(*, user: Any, name: str = "") -> tuple[ApiToken, str]:
    """A new token for ``user``: the row and the token itself (shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.objects.create(user=user, name=name[:100], prefix=token[:12], token_hash=token_hash(token))
    return row, token


def token_user(token: str) -> Any:
    """The active user the token belongs to, or ``None``; records when it was last used."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = ApiToken.objects.select_related("user").filter(token_hash=token_hash(token)).first()
    if row is None or not row.user.is_active:
        return None
    now = timezone.now()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
