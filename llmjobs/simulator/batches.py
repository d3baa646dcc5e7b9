"""Message Batches API: ``/v1/messages/batches``.

Batches are processed lazily: every request's result is computed when the
batch is created (answers are deterministic), and the batch reports
``in_progress`` until ``batch_seconds`` have passed, then ``ended`` with a
``results_url``. Cancelling before then marks the batch ``canceling`` and
its requests ``canceled``. Batches do not use the Messages API rate limits.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

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
from .stats import PromptStat

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = ["MAX_BATCH_REQUESTS", "Batch", "BatchError", "BatchStore", "batches"]

MAX_BATCH_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600


BatchError = ApiError


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".%06dZ" % int((epoch % 1) * 1e6)


class Batch:
    __slots__ = ("cancel_at", "created", "ended_at", "id", "on_end", "ready_at", "results")

    def __init__(self, batch_id: str, created: float, ready_at: float, results: list[dict[str, Any]]) -> None:
        self.on_end: Callable[[Batch], None] | None = None  # called once, when the batch ends
        self.id = batch_id
        self.created = created
        self.ready_at = ready_at
        self.cancel_at: float | None = None
        self.ended_at: float | None = None
        self.results = results  # [{"custom_id", "result"}] in request order

    def status(self, now: float) -> str:
        if self.ended_at is None and now >= self.ready_at:
            self.ended_at = self.ready_at
            if self.on_end is not None:
                self.on_end(self)
        if self.ended_at is not None:
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def as_dict(self, now: float, base_url: str) -> dict[str, Any]:
        status = self.status(now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if status == "ended":
            for item in self.results:
                counts[item["result"]["type"]] += 1
        else:
            counts["processing"] = len(self.results)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": iso(self.created),
            "expires_at": iso(self.created + _DAY),
            "ended_at": iso(self.ended_at) if self.ended_at is not None else None,
            "cancel_initiated_at": iso(self.cancel_at) if self.cancel_at is not None else None,
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if status == "ended" else None,
        }


class BatchStore:
    """All batches of one simulator, newest last."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.batches: dict[str, Batch] = {}
        self._counter = 0

    def validate(self, payload: Any) -> list[dict[str, Any]]:
        if not isinstance(payload, dict) or "requests" not in payload:
            raise BatchError(400, "invalid_request_error", "requests: Field required")
        requests = payload["requests"]
        if not isinstance(requests, list) or not requests:
            raise BatchError(400, "invalid_request_error", "requests: List should have at least 1 item")
        if len(requests) > MAX_BATCH_REQUESTS:
            raise BatchError(
                400, "invalid_request_error", f"requests: at most {MAX_BATCH_REQUESTS} requests are allowed in a batch"
            )
        seen: set[str] = set()
        for i, request in enumerate(requests):
            if not isinstance(request, dict):
                raise BatchError(400, "invalid_request_error", f"requests.{i}: Input should be a valid dictionary")
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                raise BatchError(
                    400, "invalid_request_error", f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                raise BatchError(
                    400, "invalid_request_error", f"requests: custom_id {custom_id!r} is not unique within the batch"
                )
            seen.add(custom_id)
            params = request.get("params")
            if not isinstance(params, dict):
                raise BatchError(400, "invalid_request_error", f"requests.{i}.params: Field required")
            if params.get("stream"):
                raise BatchError(400, "invalid_request_error", f"requests.{i}.params.stream: not supported in batches")
        return requests

    def add(self, results: list[dict[str, Any]], seconds: float) -> Batch:
        self._counter += 1
        now = self._wall()
        batch_id = "msgbatch_01%022x" % (int(now * 1000) * 1_000_000 + self._counter)
        batch = Batch(batch_id, now, now + seconds, results)
        self.batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise BatchError(404, "not_found_error", f"Message batch {batch_id} not found.")
        return batch

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        now = self._wall()
        if batch.status(now) != "ended" and batch.cancel_at is None:
            batch.cancel_at = now
            for item in batch.results:
                item["result"] = {"type": "canceled"}
            batch.ready_at = min(batch.ready_at, now + 0.05)  # ends right after cancelling
        return batch

    def delete(self, batch_id: str) -> dict[str, str]:
        batch = self.get(batch_id)
        if batch.status(self._wall()) != "ended":
            raise BatchError(
                400, "invalid_request_error", f"Message batch {batch_id} cannot be deleted while it is in progress."
            )
        del self.batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def page(self, limit: int, before_id: str | None, after_id: str | None) -> tuple[list[Batch], bool]:
        """Newest first, like the real API."""
        ordered = list(reversed(self.batches.values()))
        ids = [b.id for b in ordered]
        if after_id is not None:  # older than after_id
            ordered = ordered[ids.index(after_id) + 1 :] if after_id in ids else []
        elif before_id is not None:  # newer than before_id
            ordered = ordered[: ids.index(before_id)] if before_id in ids else []
            ordered = ordered[-limit:]
            return ordered, False
        return ordered[:limit], len(ordered) > limit


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
            payload = load_json(await read_body(receive, max(app.config.max_body, 256 * 1024 * 1024)))
            batch = _create(app, store.validate(payload))
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


def _create(app: SimulatorApp, requests: list[dict[str, Any]]) -> Batch:
    """Compute every result now (answers are deterministic); bill when the batch ends."""
    cfg = app.config
    counters = app.counters
    results: list[dict[str, Any]] = []
    bills: list[tuple[Prompt, PromptStat, int]] = []
    for request in requests:
        req_id = request_id()
        try:
            prompt = validate(request["params"], app.prompt_cache, app.clock, cfg.cache_min_tokens)
        except ApiError as exc:
            results.append(_errored(exc.kind, exc.message, req_id))
            continue
        stat = counters.requested(prompt)
        if cfg.fail_529 or cfg.fail_500:
            draw = app.fault_rng.random()
            if draw < cfg.fail_529:
                results.append(_errored("overloaded_error", "Overloaded", req_id))
                continue
            if draw < cfg.fail_529 + cfg.fail_500:
                results.append(_errored("api_error", "Internal server error", req_id))
                continue
        for key, ttl in prompt.cache_keys:
            app.remember_prefix(key, ttl)
        invalid = prompt.structured is not None and cfg.invalid_output and app.fault_rng.random() < cfg.invalid_output
        answer = answer_for(app, prompt, invalid=bool(invalid))
        results.append({"type": "succeeded", "message": message_object(req_id, prompt, answer, "batch")})
        bills.append((prompt, stat, answer.output_tokens))
    items = [{"custom_id": r["custom_id"], "result": res} for r, res in zip(requests, results, strict=True)]
    batch = app.batch_store.add(items, cfg.batch_seconds)
    counters.batch["batches"] += 1
    counters.batch["requests"] += len(items)

    def on_end(ended: Batch) -> None:
        for item in ended.results:
            kind = item["result"]["type"]
            counters.batch[kind] = counters.batch.get(kind, 0) + 1
        if ended.cancel_at is not None:
            return
        for prompt, stat, output_tokens in bills:
            counters.bill(prompt, stat, output_tokens, batch=True)

    batch.on_end = on_end
    batch.status(app.wall())  # batch_seconds=0: ends (and bills) at once
    return batch
