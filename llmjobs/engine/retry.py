"""Which errors are worth another try, and how long to wait before it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import anthropic
import httpx2

Headers = Mapping[str, str]

__all__ = [
    "ABORT",
    "FAIL",
    "RETRY",
    "AttemptTimeout",
    "InvalidResponse",
    "RetryPolicy",
    "StreamError",
    "Verdict",
    "classify",
    "is_outage",
]

RETRY = "retry"
FAIL = "fail"
ABORT = "abort"

# kinds: how the governor should read the failure
RATE_LIMITED = "rate_limited"  # 429: not admitted, pause the run, does not count as a failure
OVERLOADED = "overloaded"  # 529 / overloaded_error
TRANSIENT = "transient"  # 408, 409, 5xx, connection, timeout
PERMANENT = "permanent"  # 400, 404, 413, 422...
FATAL = "fatal"  # 401, 403, spend limit: abort the run

_ABORT_CODES = frozenset({"contract_spend_limit_reached", "enforced_spend_limit_reached"})
_STREAM_TYPES = {
    "overloaded_error": (RETRY, OVERLOADED),
    "rate_limit_error": (RETRY, RATE_LIMITED),
    "api_error": (RETRY, TRANSIENT),
    "connection_error": (RETRY, TRANSIENT),
    "incomplete_stream": (RETRY, TRANSIENT),  # the stream ended without message_stop
    "timeout_error": (RETRY, TRANSIENT),
    "request_timeout": (RETRY, TRANSIENT),
    "authentication_error": (ABORT, FATAL),
    "permission_error": (ABORT, FATAL),
    "billing_error": (ABORT, FATAL),
}


class StreamError(Exception):
    """An ``event: error`` inside a streamed response, or a stream that ended early."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class InvalidResponse(Exception):
    """A 200 whose body is not a Messages API answer (not JSON, or not a message). Worth a retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AttemptTimeout(Exception):
    """An attempt ran out of time (total, first token or idle)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Verdict:
    """The classification of one failed attempt."""

    __slots__ = ("action", "error_type", "headers", "kind", "message", "retry_after")

    def __init__(
        self,
        action: str,
        kind: str,
        error_type: str,
        message: str,
        retry_after: float | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.action = action
        self.kind = kind
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.headers = headers

    def __repr__(self) -> str:
        return f"Verdict({self.action!r}, {self.kind!r}, {self.error_type!r}, {self.message!r})"


def _retry_after(headers: Headers | None) -> float | None:
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _body_error(body: object) -> tuple[str | None, str | None]:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            et, msg = err.get("type"), err.get("message")
            return (et if isinstance(et, str) else None), (msg if isinstance(msg, str) else None)
    return None, None


def _is_spend_limit(code: str | None, message: str) -> bool:
    return code in _ABORT_CODES or "spend limit" in message.lower()


def _status_verdict(
    status: int, error_type: str | None, message: str, headers: Headers | None, code: str | None = None
) -> Verdict:
    verdict = _default_verdict(status, error_type, message, headers, code)
    # The server may say outright whether a retry can help (the SDK obeys this header first).
    should = headers.get("x-should-retry") if headers is not None else None
    if should == "false" and verdict.action == RETRY:
        return Verdict(FAIL, PERMANENT, verdict.error_type, message + " (the API said not to retry)")
    if should == "true" and verdict.action == FAIL:
        return Verdict(RETRY, TRANSIENT, verdict.error_type, message, _retry_after(headers))
    return verdict


def _default_verdict(
    status: int, error_type: str | None, message: str, headers: Headers | None, code: str | None
) -> Verdict:
    if status == 429:
        if _is_spend_limit(code, message):
            return Verdict(ABORT, FATAL, error_type or "rate_limit_error", message)
        return Verdict(RETRY, RATE_LIMITED, error_type or "rate_limit_error", message, _retry_after(headers), headers)
    if status == 529:
        return Verdict(RETRY, OVERLOADED, error_type or "overloaded_error", message, _retry_after(headers), headers)
    if status in (401, 402, 403):
        default = {401: "authentication_error", 402: "billing_error", 403: "permission_error"}[status]
        return Verdict(ABORT, FATAL, error_type or default, message)
    if status in (408, 409) or status >= 500:
        return Verdict(
            RETRY,
            TRANSIENT,
            error_type or ("api_error" if status >= 500 else f"http_{status}"),
            message,
            _retry_after(headers),
        )
    return Verdict(FAIL, PERMANENT, error_type or f"http_{status}", message)


def classify(exc: BaseException) -> Verdict:
    """Map an exception raised by one attempt to retry / fail / abort."""
    if isinstance(exc, AttemptTimeout):
        return Verdict(RETRY, TRANSIENT, "timeout", exc.message)
    if isinstance(exc, InvalidResponse):
        return Verdict(RETRY, TRANSIENT, "invalid_response", exc.message)
    if isinstance(exc, StreamError):
        action, kind = _STREAM_TYPES.get(exc.error_type, (FAIL, PERMANENT))
        return Verdict(action, kind, exc.error_type, exc.message)
    if isinstance(exc, anthropic.APIStatusError):
        error_type, message = _body_error(exc.body)
        message = message or exc.message
        status = exc.status_code
        if status == 200:  # `event: error` inside a 200 stream, raised by the SDK's iterator
            action, kind = _STREAM_TYPES.get(error_type or "", (FAIL, PERMANENT))
            return Verdict(action, kind, error_type or "api_error", message)
        headers = exc.response.headers if exc.response is not None else None
        return _status_verdict(status, error_type, message, headers, exc.error_code)
    if isinstance(exc, anthropic.APITimeoutError):
        return Verdict(RETRY, TRANSIENT, "timeout", "request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        return Verdict(RETRY, TRANSIENT, "connection_error", f"{exc.message} {cause!r}" if cause else exc.message)
    if isinstance(exc, (httpx2.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return Verdict(RETRY, TRANSIENT, "timeout", str(exc) or type(exc).__name__)
    if isinstance(exc, (httpx2.TransportError, httpx2.StreamError, OSError, EOFError)):
        return Verdict(RETRY, TRANSIENT, "connection_error", f"{type(exc).__name__}: {exc}")
    if type(exc).__module__.startswith("aiohttp"):
        return Verdict(RETRY, TRANSIENT, "connection_error", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return Verdict(FAIL, PERMANENT, "invalid_response", str(exc))
    return Verdict(FAIL, PERMANENT, type(exc).__name__, str(exc) or repr(exc))


# Timeouts and cut streams are left out: one item's long answer or odd content
# can cause them, and a run of one such item must still end.
_OUTAGE_TYPES = frozenset({"connection_error", "api_error", "overloaded_error"})


def is_outage(verdict: Verdict) -> bool:
    """Does this failure say the API is unreachable or down (rather than something about the item)?"""
    if verdict.kind == OVERLOADED:
        return True
    return verdict.kind == TRANSIENT and (
        verdict.error_type in _OUTAGE_TYPES or verdict.error_type.startswith("http_5")
    )


class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and a per-item deadline."""

    __slots__ = ("_rng", "base", "cap", "deadline", "max_attempts")

    def __init__(
        self,
        *,
        max_attempts: int = 8,
        base: float = 0.5,
        cap: float = 30.0,
        deadline: float = 900.0,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.base = base
        self.cap = cap
        self.deadline = deadline
        self._rng = rng or random.Random()

    def backoff(self, failures: int) -> float:
        """Delay before the next try after ``failures`` counted failures (full jitter)."""
        ceiling = self.base * (2 ** min(failures - 1, 30))
        if ceiling > self.cap:
            ceiling = self.cap
        return float(self._rng.random() * ceiling)

    def allows(self, verdict: Verdict, failures: int, started: float, retry_at: float) -> bool:
        """May the item be tried again at ``retry_at`` (same clock as ``started``)?"""
        if verdict.action != RETRY:
            return False
        if verdict.kind != RATE_LIMITED and failures >= self.max_attempts:
            return False
        return retry_at - started <= self.deadline
