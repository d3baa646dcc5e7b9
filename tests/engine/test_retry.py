"""Error classification and backoff (narrow: SDK error objects built by hand)."""

from __future__ import annotations

import random

import anthropic
import httpx2
import pytest
from anthropic._error_classes import make_status_error

from llmjobs.engine import AttemptTimeout, RetryPolicy, StreamError, classify
from llmjobs.engine.retry import ABORT, FAIL, OVERLOADED, PERMANENT, RATE_LIMITED, RETRY, TRANSIENT

REQ = httpx2.Request("POST", "http://sim/v1/messages")


def status_error(status: int, etype: str, message: str = "boom", headers: dict | None = None, code: str | None = None):
    body = {"type": "error", "error": {"type": etype, "message": message}}
    if code:
        body["error"]["details"] = {"error_code": code}
    response = httpx2.Response(status, json=body, headers=headers or {}, request=REQ)
    return make_status_error(f"Error code: {status}", body=body, response=response)


@pytest.mark.parametrize(
    ("status", "etype", "action", "kind"),
    [
        (400, "invalid_request_error", FAIL, PERMANENT),
        (404, "not_found_error", FAIL, PERMANENT),
        (413, "request_too_large", FAIL, PERMANENT),
        (422, "invalid_request_error", FAIL, PERMANENT),
        (401, "authentication_error", ABORT, "fatal"),
        (403, "permission_error", ABORT, "fatal"),
        (408, "timeout_error", RETRY, TRANSIENT),
        (409, "conflict_error", RETRY, TRANSIENT),
        (429, "rate_limit_error", RETRY, RATE_LIMITED),
        (500, "api_error", RETRY, TRANSIENT),
        (503, "api_error", RETRY, TRANSIENT),
        (529, "overloaded_error", RETRY, OVERLOADED),
    ],
)
def test_status_errors(status, etype, action, kind):
    v = classify(status_error(status, etype, "the message"))
    assert (v.action, v.kind, v.error_type) == (action, kind, etype)
    assert v.message == "the message"


def test_429_retry_after_is_read():
    v = classify(status_error(429, "rate_limit_error", headers={"retry-after": "3"}))
    assert v.retry_after == 3.0
    assert v.headers is not None


def test_spend_limit_429_aborts():
    v = classify(status_error(429, "rate_limit_error", code="enforced_spend_limit_reached"))
    assert v.action == ABORT


def test_error_event_inside_a_200_stream_is_classified_by_its_type():
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    response = httpx2.Response(200, request=REQ)
    err = anthropic.APIStatusError("x", response=response, body=body)
    v = classify(err)
    assert (v.action, v.kind) == (RETRY, OVERLOADED)
    body["error"]["type"] = "invalid_request_error"
    assert classify(anthropic.APIStatusError("x", response=response, body=body)).action == FAIL


def test_own_stream_errors_and_timeouts():
    assert classify(StreamError("api_error", "x")).action == RETRY
    assert classify(StreamError("overloaded_error", "x")).kind == OVERLOADED
    assert classify(StreamError("invalid_request_error", "x")).action == FAIL
    v = classify(AttemptTimeout("no response within 1s"))
    assert (v.action, v.error_type) == (RETRY, "timeout")


def test_connection_errors_retry():
    assert classify(anthropic.APIConnectionError(request=REQ)).action == RETRY
    assert classify(anthropic.APITimeoutError(request=REQ)).error_type == "timeout"
    assert classify(httpx2.RemoteProtocolError("peer closed", request=REQ)).action == RETRY
    assert classify(ConnectionResetError()).action == RETRY


def test_unknown_exception_fails_with_its_name():
    v = classify(ValueError("bad"))
    assert (v.action, v.error_type, v.message) == (FAIL, "ValueError", "bad")


def test_backoff_is_full_jitter_exponential_and_capped():
    p = RetryPolicy(base=0.5, cap=4.0, rng=random.Random(0))
    for failures, hi in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)]:
        samples = [p.backoff(failures) for _ in range(200)]
        assert min(samples) >= 0 and max(samples) <= hi
        assert max(samples) > hi * 0.8  # spread over the whole range


def test_policy_limits_attempts_but_not_429s_and_honours_deadline():
    p = RetryPolicy(max_attempts=3, deadline=60.0)
    server = classify(status_error(500, "api_error"))
    limited = classify(status_error(429, "rate_limit_error"))
    assert p.allows(server, 2, 0.0, 1.0)
    assert not p.allows(server, 3, 0.0, 1.0)
    assert p.allows(limited, 50, 0.0, 59.0)
    assert not p.allows(limited, 0, 0.0, 61.0)
    assert not p.allows(classify(status_error(400, "invalid_request_error")), 0, 0.0, 0.0)
