"""Plain data types shared by the engine: what to run, how, and what came back."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CANCELLED", "FAILED", "SUCCEEDED", "Call", "EngineConfig", "Outcome", "RunAborted"]

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Call:
    """One Messages API call to make.

    ``key`` identifies the item (e.g. a database id) and comes back on its
    :class:`Outcome`. ``params`` are the Messages API parameters (``model``,
    ``max_tokens``, ``messages``, ``system``, ``stop_sequences``, ``metadata``...).
    ``stream=True`` sends a streaming request: it records the time to first
    token and is guarded by first-token and idle timeouts.
    ``validate(text, stop_reason)``, when given, checks each answer: ``None`` if it
    is acceptable, else why not; an unacceptable answer is repaired once, then the
    item fails as ``invalid_output`` (see ``repair``).
    """

    key: Hashable
    params: Mapping[str, Any]
    stream: bool = False
    validate: Callable[[str | None, str | None], str | None] | None = None


@dataclass(slots=True)
class Outcome:
    """How one call ended. ``status`` is ``"succeeded"``, ``"failed"`` or ``"cancelled"``.

    ``attempts`` counts every HTTP request sent for the item (429s included);
    ``latency`` is the duration of the last attempt in seconds and ``ttft``
    its time to first token (streamed calls only).
    """

    key: Hashable
    status: str
    text: str | None = None
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    latency: float | None = None
    ttft: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    message_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


@dataclass(slots=True)
class EngineConfig:
    """Engine settings. Every default is meant to be right without tuning.

    Rate limits (``rpm``, ``itpm``, ``otpm``) are learned from the API's
    ``anthropic-ratelimit-*`` headers; set them only to start paced from the
    first request (e.g. a known tier) or to stay below the account's limit.
    """

    #: requests / input tokens / output tokens per minute; None = learn from headers
    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    #: upper bound of the adaptive in-flight ceiling
    max_concurrency: int = 512
    #: in-flight ceiling at the start (slow start grows it from there)
    initial_concurrency: int = 32
    #: requests per item that may fail (429s excluded) before the item fails
    max_attempts: int = 8
    #: seconds from an item's first dispatch after which it is not retried again
    item_deadline: float = 900.0
    #: per-attempt timeout of a non-streamed call; None = adaptive (see min/max below)
    attempt_timeout: float | None = None
    #: floor of the adaptive per-attempt timeout
    min_attempt_timeout: float = 10.0
    #: ceiling of the adaptive per-attempt timeout
    max_attempt_timeout: float = 600.0
    #: streamed calls: seconds to the first content event, then between content events
    first_token_timeout: float = 60.0
    idle_timeout: float = 30.0
    #: exponential backoff with full jitter for retried errors
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: whole-run pause after a 429/529 that carries no retry-after (doubles per streak)
    pause_base: float = 0.05
    pause_max: float = 30.0
    #: learn limits from response headers
    learn_limits: bool = True
    #: seconds of warm-up at most: a small first wave in flight until the first answer (12
    #: calls at most, within what any account allows at once: see governor.FIRST_WAVE), to
    #: learn the account's limits before the full wave (0 = off: the initial ceiling at once).
    #: The first wave's first call is streamed: its response headers end the warm-up at once
    #: when they show no limit, or room for the next wave in every budget (Governor.on_open)
    warmup: float = 1.0
    #: calls in the warm-up's first wave at most; 1 where other processes may be using the
    #: same account's limits right now (the runner does so when the org governor shows them)
    first_wave: int = 12

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.initial_concurrency = max(1, min(self.initial_concurrency, self.max_concurrency))


class RunAborted(Exception):
    """The run stopped at once because retrying cannot help (401, 403, spend limit).

    ``undone_keys`` lists the keys that were taken from the input but not
    finished; they were not reported as outcomes, so a fixed run can resume them.
    """

    def __init__(self, error_type: str, message: str, undone_keys: list[Hashable] | None = None) -> None:
        super().__init__(f"run aborted ({error_type}): {message}")
        self.error_type = error_type
        self.message = message
        self.undone_keys = undone_keys if undone_keys is not None else []
