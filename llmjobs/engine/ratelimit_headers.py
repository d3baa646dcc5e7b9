"""Reading the API's ``anthropic-ratelimit-*`` headers: names, reset times, a one-pass reader."""

from __future__ import annotations

from datetime import datetime

__all__ = ["HEADER_NAMES", "parse_reset", "ratelimit_headers"]

# (limit, remaining, reset) for requests, input tokens and output tokens
HEADER_NAMES = (
    (
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
)


def parse_reset(value: str | None, wall: float) -> tuple[float | None, bool]:
    """Seconds from now until ``value`` (RFC 3339), and whether it is rounded to whole seconds."""
    if not value:
        return None, False
    try:
        return datetime.fromisoformat(value).timestamp() - wall, "." not in value
    except ValueError:
        try:
            return float(value), False
        except ValueError:
            return None, False


_RL_PREFIX = b"anthropic-ratelimit-"


def ratelimit_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``anthropic-ratelimit-*`` pairs of raw (bytes) headers, keys lower-cased."""
    out: dict[str, str] = {}
    for k, v in raw:
        if len(k) > 20 and k[:20].lower() == _RL_PREFIX:
            out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out
