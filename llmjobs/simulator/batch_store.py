"""The Message Batches store: batches, their requests' progress and results.

Every request's result is computed when its batch is created (answers are
deterministic); what time decides is *when* each one counts as done. A
request finishes at its own moment, spread over ``batch_seconds`` (so
``request_counts`` move while the batch is ``in_progress``); an expired one
never finishes and ends ``expired`` with the batch, as does every request not
done when the batch reaches its 24 h ``expires_at`` (``batch_seconds`` over a day). Results are kept, and
served, in a shuffled order (seeded), as the API returns them in any order.
Cancelling marks every request not yet done ``canceled`` and ends the batch
right after (``canceling`` meanwhile); done requests keep their result.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from .respond import ApiError

__all__ = ["CUSTOM_ID", "Batch", "BatchStore", "iso"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600
_KINDS = ("succeeded", "errored", "canceled", "expired")
_CANCEL_SECONDS = 0.05  # a cancelled batch ends this long after the cancel


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".%06dZ" % int((epoch % 1) * 1e6)


class Batch:
    __slots__ = ("cancel_at", "created", "done_at", "ended_at", "id", "on_end", "ready_at", "results")

    def __init__(
        self, batch_id: str, created: float, ready_at: float, results: list[dict[str, Any]], done_at: list[float]
    ) -> None:
        self.on_end: Callable[[Batch], None] | None = None  # called once, when the batch ends
        self.id = batch_id
        self.created = created
        self.ready_at = ready_at
        self.cancel_at: float | None = None
        self.ended_at: float | None = None
        self.results = results  # [{"custom_id", "result"}] in the (shuffled) order they are served
        self.done_at = done_at  # when each request is done (inf: it expires with the batch)

    def status(self, now: float) -> str:
        if self.ended_at is None and now >= self.ready_at:
            self.ended_at = self.ready_at
            for item, done in zip(self.results, self.done_at, strict=True):
                if done > self.ready_at and item["result"]["type"] != "canceled":
                    item["result"] = {"type": "expired"}
            if self.on_end is not None:
                self.on_end(self)
        if self.ended_at is not None:
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def counts(self, now: float) -> dict[str, int]:
        """``request_counts``: requests done so far by result, the rest processing."""
        ended = self.status(now) == "ended"
        counts = {"processing": 0, **dict.fromkeys(_KINDS, 0)}
        for item, done in zip(self.results, self.done_at, strict=True):
            if ended or done <= now:
                counts[item["result"]["type"]] += 1
            else:
                counts["processing"] += 1
        return counts

    def as_dict(self, now: float, base_url: str) -> dict[str, Any]:
        counts = self.counts(now)
        status = self.status(now)
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


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


class BatchStore:
    """All batches of one simulator, newest last. They live in the simulator
    process: a client that goes away finds them again by id."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.batches: dict[str, Batch] = {}
        self.counter = 0

    @staticmethod
    def validate(payload: Any, max_requests: int) -> list[dict[str, Any]]:
        if not isinstance(payload, dict) or "requests" not in payload:
            raise _bad("requests: Field required")
        requests = payload["requests"]
        if not isinstance(requests, list) or not requests:
            raise _bad("requests: List should have at least 1 item")
        if len(requests) > max_requests:
            raise _bad(f"requests: at most {max_requests:,} requests are allowed in a batch (got {len(requests):,})")
        seen: set[str] = set()
        for i, request in enumerate(requests):
            if not isinstance(request, dict):
                raise _bad(f"requests.{i}: Input should be a valid dictionary")
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                raise _bad(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if custom_id in seen:
                raise _bad(f"requests: custom_id {custom_id!r} is not unique within the batch")
            seen.add(custom_id)
            params = request.get("params")
            if not isinstance(params, dict):
                raise _bad(f"requests.{i}.params: Field required")
            if params.get("stream"):
                raise _bad(f"requests.{i}.params.stream: not supported in batches")
        return requests

    def next_number(self) -> int:
        self.counter += 1
        return self.counter

    def add(self, number: int, results: list[dict[str, Any]], finish: list[float], seconds: float) -> Batch:
        """A batch of ``results``; request i is done at ``finish[i]`` (a share of
        ``seconds`` in (0, 1], or inf for one that expires)."""
        now = self._wall()
        batch_id = "msgbatch_01%022x" % (int(now * 1000) * 1_000_000 + number)
        done_at = [now + share * seconds if share <= 1.0 else float("inf") for share in finish]
        # A batch ends within 24 h: requests not done by then expire (batch_seconds > 1 day).
        batch = Batch(batch_id, now, now + min(seconds, _DAY), results, done_at)
        self.batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"Message batch {batch_id} not found.")
        return batch

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        now = self._wall()
        if batch.status(now) != "ended" and batch.cancel_at is None:
            batch.cancel_at = now
            for index, item in enumerate(batch.results):
                if batch.done_at[index] > now:
                    item["result"] = {"type": "canceled"}
                    batch.done_at[index] = now
            batch.ready_at = min(batch.ready_at, now + _CANCEL_SECONDS)  # ends right after cancelling
        return batch

    def delete(self, batch_id: str) -> dict[str, str]:
        batch = self.get(batch_id)
        if batch.status(self._wall()) != "ended":
            raise _bad(f"Message batch {batch_id} cannot be deleted while it is in progress.")
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
