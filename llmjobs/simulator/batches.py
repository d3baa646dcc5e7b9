"""Message Batches API: the ``/v1/messages/batches`` routes.

Every request's result is computed when the batch is created (answers are
deterministic) and served once the batch has ended; the store
(:mod:`.batch_store`) decides when each request counts as done. Limits as
the API's: ``--batch-max-requests`` (100,000; more is a 400) and
``--batch-max-bytes`` (256 MB; a larger body is a 413). ``--batch-error`` and
``--batch-expire`` end a share of requests ``errored`` (api_error) or
``expired``; ``--fail-500``/``--fail-529`` also end requests ``errored``.
Succeeded requests are billed when the batch ends, into ``/_sim/stats``
``batch`` (at :data:`BATCH_PRICE_MULTIPLIER` of the standard price), apart from
the Messages API's totals. Batches do not use the Messages API rate limits.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import orjson

from .batch_store import Batch, BatchStore
from .faults import pick
from .messages import answer_for, message_object
from .prompt import Prompt, validate
from .respond import (
    ApiError,
    Receive,
    Scope,
    Send,
    auth_error,
    load_json,
    read_body,
    request_id,
    send_error,
    send_json,
)
from .respond import query as parse_query
from .stats import BATCH_PRICE_MULTIPLIER, PromptStat

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = [
    "BATCH_PRICE_MULTIPLIER",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_REQUESTS",
    "Batch",
    "BatchError",
    "BatchStore",
    "batches",
]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
BatchError = ApiError


# ---------------------------------------------------------------------- routes
def _base_url(scope: Scope) -> str:
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


async def batches(app: SimulatorApp, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
    """``/v1/messages/batches[/{id}[/cancel|/results]]``."""
    store = app.batch_store
    try:
        problem = auth_error(scope, app.config.api_key)
        if problem is not None:
            raise problem
        now = app.wall()
        base = _base_url(scope)
        parts = path[len("/v1/messages/batches") :].strip("/").split("/")
        if parts == [""] and method == "POST":
            payload = load_json(await read_body(receive, app.config.batch_max_bytes))
            batch = _create(app, store.validate(payload, app.config.batch_max_requests))
            await send_json(send, 200, batch.as_dict(now, base))
        elif parts == [""] and method == "GET":
            await send_json(send, 200, _list(store, scope, now, base))
        elif parts == [""]:
            raise BatchError(405, "invalid_request_error", "Method not allowed")
        elif len(parts) == 1 and method == "GET":
            await send_json(send, 200, store.get(parts[0]).as_dict(now, base))
        elif len(parts) == 1 and method == "DELETE":
            await send_json(send, 200, store.delete(parts[0]))
        elif len(parts) == 2 and parts[1] == "cancel" and method == "POST":
            await send_json(send, 200, store.cancel(parts[0]).as_dict(now, base))
        elif len(parts) == 2 and parts[1] == "results" and method == "GET":
            await _results(send, store.get(parts[0]), now)
        else:
            raise BatchError(404, "not_found_error", "Not Found")
    except BatchError as exc:
        await send_error(send, exc.status, exc.kind, exc.message, [])


def _list(store: BatchStore, scope: Scope, now: float, base: str) -> dict[str, Any]:
    query = parse_query(scope)
    limit = max(1, min(1000, int(query.get("limit", "20") or 20)))
    page, has_more = store.page(limit, query.get("before_id"), query.get("after_id"))
    data = [b.as_dict(now, base) for b in page]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


async def _results(send: Send, batch: Batch, now: float) -> None:
    if batch.status(now) != "ended":
        raise BatchError(
            404, "not_found_error", f"No results available for message batch {batch.id}: still in progress."
        )
    body = b"".join(orjson.dumps(item) + b"\n" for item in batch.results)
    headers = [
        (b"content-type", b"application/x-jsonl"),
        (b"content-length", b"%d" % len(body)),
        (b"request-id", request_id().encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _errored(kind: str, message: str, req_id: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {"type": "error", "error": {"type": kind, "message": message}, "request_id": req_id},
    }


def _draw(app: SimulatorApp) -> str | None:
    """One seeded draw for a batch request: how it ends if not succeeded."""
    cfg = app.config
    rates = (
        ("overloaded_error", cfg.fail_529),
        ("api_error", cfg.fail_500),
        ("batch_error", cfg.batch_error),
        ("expired", cfg.batch_expire),
    )
    return pick(rates, app.fault_rng)


def _create(app: SimulatorApp, requests: list[dict[str, Any]]) -> Batch:
    """Compute every result now (answers are deterministic); bill when the batch ends."""
    cfg = app.config
    counters = app.counters
    store = app.batch_store
    results: list[dict[str, Any]] = []
    bills: list[tuple[Prompt, PromptStat, int] | None] = []
    expires: list[bool] = []
    for request in requests:
        req_id = request_id()
        bill = None
        expired = False
        try:
            params = request["params"]
            prompt = validate(params, app.prompt_cache, app.clock, cfg.cache_min_tokens, cfg.no_structured_output)
        except ApiError as exc:
            results.append(_errored(exc.kind, exc.message, req_id))
        else:
            stat = counters.requested(prompt)
            outcome = _draw(app)
            if outcome == "overloaded_error":
                results.append(_errored("overloaded_error", "Overloaded", req_id))
            elif outcome in ("api_error", "batch_error"):
                results.append(_errored("api_error", "Internal server error", req_id))
            else:
                expired = outcome == "expired"
                for key, ttl in prompt.cache_keys if not expired else ():  # an expired request never ran
                    app.remember_prefix(key, ttl)
                invalid = prompt.structured is not None and cfg.invalid_output > 0
                invalid = invalid and app.fault_rng.random() < cfg.invalid_output
                answer = answer_for(app, prompt, invalid=invalid)
                results.append({"type": "succeeded", "message": message_object(req_id, prompt, answer, "batch")})
                bill = (prompt, stat, answer.output_tokens)
        bills.append(bill)
        expires.append(expired)
    number = store.next_number()
    order = random.Random(f"{cfg.seed}:{number}")  # results come back in any order: a seeded one
    finish = [float("inf") if gone else 1.0 - order.random() for gone in expires]  # each in (0, 1]
    rows = [
        ({"custom_id": r["custom_id"], "result": res}, share, bill)
        for r, res, share, bill in zip(requests, results, finish, bills, strict=True)
    ]
    order.shuffle(rows)
    paid = [bill for _, _, bill in rows]  # aligned with batch.results
    batch = store.add(number, [item for item, _, _ in rows], [share for _, share, _ in rows], cfg.batch_seconds)
    counters.batch["batches"] += 1
    counters.batch["requests"] += len(rows)

    def on_end(ended: Batch) -> None:
        for item, bill in zip(ended.results, paid, strict=True):
            kind = item["result"]["type"]
            counters.batch[kind] = counters.batch.get(kind, 0) + 1
            if kind == "succeeded" and bill is not None:
                counters.bill(*bill, batch=True)

    batch.on_end = on_end
    batch.status(app.wall())  # batch_seconds=0: ends (and bills) at once
    return batch
