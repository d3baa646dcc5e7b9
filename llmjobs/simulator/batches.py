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
from typing import Any

__all__ = ["MAX_BATCH_REQUESTS", "Batch", "BatchError", "BatchStore"]

MAX_BATCH_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600


class BatchError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


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
