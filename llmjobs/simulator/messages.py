"""``POST /v1/messages`` (plain answers; streams are in :mod:`.streaming`)
and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from . import faults
from .answers import count_tokens as text_tokens
from .answers import finish, make_answer
from .buckets import Admission, RateLimiter
from .config import SimConfig
from .json_answers import generate, invalidate
from .prompt import Answer, Prompt, validate
from .respond import (
    CT_JSON,
    TOO_LARGE,
    ApiError,
    Headers,
    Receive,
    Scope,
    Send,
    auth_error,
    close_connection,
    load_json,
    read_body,
    request_id,
    send_error,
    send_json,
    wait_or_disconnect,
)
from .stats import DISCONNECTED
from .streaming import stream

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = ["answer_for", "count_tokens", "message_object", "messages", "settle"]

_ADMITTED = Admission(True)
_ANSWER_CACHE_SIZE = 8192


async def messages(app: SimulatorApp, scope: Scope, receive: Receive, send: Send) -> None:
    app.counters.started()
    status = 500
    try:
        status = await _handle(app, scope, receive, send)
    finally:
        app.counters.ended(status)


def _header_fault(scope: Scope) -> tuple[int, str | None]:
    """The request's ``content-length`` (-1 if absent or bad) and ``x-sim-fault``."""
    content_length = -1
    fault = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = -1
        elif name == b"x-sim-fault":
            fault = value.decode("latin-1").strip() or None
    return content_length, fault


async def _read_prompt(app: SimulatorApp, scope: Scope, receive: Receive, content_length: int) -> Prompt:
    """Check size, auth and capacity, read and validate the body; raise ApiError."""
    cfg = app.config
    if content_length > cfg.max_body:
        raise ApiError(413, "request_too_large", TOO_LARGE)
    problem = auth_error(scope, cfg.api_key)
    if problem is not None:
        raise problem
    if cfg.capacity and app.counters.in_flight > cfg.capacity:
        raise ApiError(529, "overloaded_error", "Overloaded")
    payload = load_json(await read_body(receive, cfg.max_body))
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request_error", "Input should be a valid dictionary")
    return validate(payload, app.prompt_cache, app.clock, cfg.cache_min_tokens, cfg.no_structured_output)


async def _handle(app: SimulatorApp, scope: Scope, receive: Receive, send: Send) -> int:
    cfg = app.config
    limiter = app.limiter
    if app.outage_active():
        return await faults.fail_outage(send, receive, app.outage_mode)
    content_length, fault = _header_fault(scope)
    if fault is None and app.fault_queue:
        fault = app.fault_queue.pop(0)
    try:
        prompt = await _read_prompt(app, scope, receive, content_length)
    except ApiError as exc:
        return await send_error(send, exc.status, exc.kind, exc.message, limiter.headers())
    stat = app.counters.requested(prompt)

    if fault in _BEFORE_ADMISSION:
        return await _fail_early(send, receive, limiter, fault)

    # Rate limits: RPM, ITPM (uncached input), OTPM (reserve max_tokens).
    uncached = prompt.input_tokens + prompt.cache_creation
    admission = limiter.admit(uncached, prompt.max_tokens) if limiter.enabled else _ADMITTED
    if not admission.ok:
        headers = limiter.headers()
        headers.append((b"retry-after", b"%d" % admission.retry_after_header))
        return await send_error(send, 429, "rate_limit_error", rate_message(cfg, admission), headers)
    # remaining_at="admission": the headers every answer to this request carries, taken now.
    snapshot = limiter.headers() if cfg.remaining_at == "admission" and limiter.enabled else None

    if fault is None:
        fault = faults.draw(cfg, app.fault_rng, prompt.stream, prompt.structured is not None)
    if fault == "529":
        headers = settle(limiter, admission, 0, snapshot, cfg.remaining_at)
        return await send_error(send, 529, "overloaded_error", "Overloaded", headers)

    for key, ttl in prompt.cache_keys:
        app.remember_prefix(key, ttl)

    if fault in ("500", "should_retry_false") or (fault in ("drop_stream", "cut_stream") and not prompt.stream):
        if cfg.ttft and await wait_or_disconnect(receive, app.ttft()):
            limiter.settle(admission.output_reserved, 0)
            return DISCONNECTED
        headers = settle(limiter, admission, 0, snapshot, cfg.remaining_at)
        if fault == "cut_stream" and await close_connection(send, receive):
            return faults.CLOSED
        if fault == "should_retry_false":
            headers.append((b"x-should-retry", b"false"))
        return await send_error(send, 500, "api_error", "Internal server error", headers)
    if fault in ("hang", "stall_stream") and not prompt.stream:
        await wait_or_disconnect(receive, None)
        limiter.settle(admission.output_reserved, 0)
        return DISCONNECTED

    answer = answer_for(app, prompt, invalid=fault == "invalid_output")
    if fault == "invalid_output":
        fault = None
    if prompt.stream:
        return await stream(app, send, receive, prompt, stat, admission, answer, fault, snapshot)

    if cfg.ttft or cfg.tps:
        delay = app.ttft() + (answer.output_tokens / cfg.tps if cfg.tps else 0.0)
        if await wait_or_disconnect(receive, delay):
            limiter.settle(admission.output_reserved, 0)
            return DISCONNECTED
    limit_headers = settle(limiter, admission, answer.output_tokens, snapshot, cfg.remaining_at)
    app.counters.bill(prompt, stat, answer.output_tokens)
    req_id = request_id()
    body = orjson.dumps(message_object(req_id, prompt, answer, "standard"))
    if fault == "bad_json":  # the call was answered and billed; the body is cut short
        body = body[: len(body) // 2]
    headers = [CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", req_id.encode())]
    headers.extend(limit_headers)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return 200


_BEFORE_ADMISSION = frozenset({"529", "429", "429_retry_after_ms", "should_retry_true", "close"})


async def _fail_early(send: Send, receive: Receive, limiter: RateLimiter, fault: str) -> int:
    """An injected fault that happens before admission (nothing reserved, nothing billed)."""
    headers = limiter.headers()
    if fault == "529":
        return await send_error(send, 529, "overloaded_error", "Overloaded", headers)
    if fault == "should_retry_true":
        headers.append((b"x-should-retry", b"true"))
        return await send_error(send, 400, "invalid_request_error", "Simulated transient 400", headers)
    if fault == "close":
        if await close_connection(send, receive):
            return faults.CLOSED
        return await send_error(send, 503, "api_error", "Service Unavailable", headers)
    headers.append((b"retry-after", b"2" if fault == "429_retry_after_ms" else b"1"))
    if fault == "429_retry_after_ms":
        headers.append((b"retry-after-ms", b"1500"))
    return await send_error(
        send, 429, "rate_limit_error", "This request would exceed your organization's rate limit.", headers
    )


def answer_for(app: SimulatorApp, prompt: Prompt, invalid: bool = False) -> Answer:
    """The deterministic answer (memoised per prompt and ``answer_tokens``), cut
    at ``max_tokens`` and the stop sequences. A structured request gets JSON valid
    under its schema (a tool call or a text block), spoiled if ``invalid``; ``invalid``
    does nothing to a plain request."""
    answer_tokens = app.config.answer_tokens
    structured = prompt.structured
    tool: str | None = None
    schema: dict[str, Any] | None = None
    if structured is not None:
        tool = structured.tool_for(f"{prompt.system_text}\n{prompt.user_text}")
        schema = structured.tools[tool] if tool else structured.schema
    invalid = invalid and schema is not None
    if schema is not None:
        counts = app.counters.structured
        counts["answers"] += 1
        counts["tool_use"] += tool is not None
        counts["invalid"] += invalid
    key = (prompt.prompt_key + ("!" if invalid else ""), answer_tokens)
    answers = app.answers
    text = answers.get(key)
    if text is None:
        if schema is not None:
            value = generate(schema, prompt.system_text, prompt.user_text)
            prose = None
            if invalid:
                value, prose = invalidate(value, schema, prompt.prompt_key, tool=tool is not None)
            text = (prose or "") + orjson.dumps(value).decode()
        else:
            text = make_answer(prompt.system_text, prompt.user_text, prompt.prefill, answer_tokens)
        answers[key] = text
        if len(answers) > _ANSWER_CACHE_SIZE:
            answers.popitem(last=False)
    if tool is None:
        return Answer(*finish(text, prompt.max_tokens, prompt.stop_sequences))
    tokens = text_tokens(text)
    if tokens > prompt.max_tokens:  # a tool call cut short: its input is incomplete (empty here)
        return Answer(text[: prompt.max_tokens * 4], "max_tokens", None, prompt.max_tokens, tool, {})
    return Answer(text, "tool_use", None, max(1, tokens), tool, orjson.loads(text))


def settle(limiter: RateLimiter, admission: Admission, actual: int, snapshot: Headers | None, at: str) -> Headers:
    """Correct the call's output reservation to ``actual`` and return the
    rate-limit headers of its answer, computed per ``remaining_at``: the
    admission ``snapshot``, before the refund (``answer``) or after it (``refund``)."""
    if snapshot is not None:
        limiter.settle(admission.output_reserved, actual)
        return snapshot
    if at == "answer":
        headers = limiter.headers()
        limiter.settle(admission.output_reserved, actual)
        return headers
    limiter.settle(admission.output_reserved, actual)
    return limiter.headers()


def rate_message(cfg: SimConfig, admission: Admission) -> str:
    what = {
        "requests": f"{cfg.rpm} requests per minute",
        "input_tokens": f"{cfg.itpm} input tokens per minute",
        "output_tokens": f"{cfg.otpm} output tokens per minute",
    }[admission.limited_by]
    return (
        f"This request would exceed the rate limit for your organization of {what}. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits. "
        "You can see the response headers for current usage. Please reduce the prompt length "
        "or the maximum tokens requested, or try again later."
    )


def message_object(req_id: str, prompt: Prompt, answer: Answer, service_tier: str) -> dict[str, Any]:
    """A complete Message object, as a plain answer or a batch result carries it."""
    return {
        "id": "msg_01" + req_id[8:],
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [answer.content(req_id)],
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "usage": {**prompt.usage(), "output_tokens": answer.output_tokens, "service_tier": service_tier},
    }


async def count_tokens(app: SimulatorApp, scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive, app.config.max_body)
    try:
        payload = load_json(body)
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_request_error", "Request body must be a JSON object")
        payload.setdefault("max_tokens", 1)
        prompt = validate(
            payload, app.prompt_cache, app.clock, app.config.cache_min_tokens, app.config.no_structured_output
        )
    except ApiError as exc:
        await send_error(send, exc.status, exc.kind, exc.message, [])
        return
    total = prompt.input_tokens + prompt.cache_creation + prompt.cache_read
    await send_json(send, 200, {"input_tokens": total})
