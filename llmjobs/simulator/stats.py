"""What the simulator counts: requests by status, concurrency, tokens billed
and per-prompt request/paid counts (which expose duplicate spend)."""

from __future__ import annotations

from typing import Any

from .prompt import Prompt

#: Message Batches cost this share of the standard price (input and output).
BATCH_PRICE_MULTIPLIER = 0.5

__all__ = ["DISCONNECTED", "PromptStat", "Stats"]

_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
)
DISCONNECTED = 499  # by_status key for requests the client abandoned


class PromptStat:
    __slots__ = ("paid", "preview", "requests")

    def __init__(self, preview: str) -> None:
        self.requests = 0
        self.paid = 0
        self.preview = preview


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.stream_errors = 0
        self.tokens = dict.fromkeys(_TOKENS, 0)
        self.prompts: dict[str, PromptStat] = {}
        #: structured answers (output_config.format or a tool call), tool calls, spoiled by invalid_output
        self.structured = {"answers": 0, "tool_use": 0, "invalid": 0}
        self.batch = {
            "batches": 0,
            "requests": 0,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
            **self.tokens,
        }

    def started(self) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def ended(self, status: int) -> None:
        self.in_flight -= 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def requested(self, prompt: Prompt) -> PromptStat:
        """Count one request of ``prompt``; its stat."""
        stat = self.prompts.get(prompt.prompt_key)
        if stat is None:
            stat = self.prompts[prompt.prompt_key] = PromptStat(prompt.preview)
        stat.requests += 1
        return stat

    def bill(self, prompt: Prompt, stat: PromptStat, output_tokens: int, batch: bool = False) -> None:
        """Count one paid call (into the batch totals with ``batch``)."""
        stat.paid += 1
        tokens = self.batch if batch else self.tokens
        tokens["input_tokens"] += prompt.input_tokens
        tokens["output_tokens"] += output_tokens
        tokens["cache_creation_input_tokens"] += prompt.cache_creation
        tokens["cache_read_input_tokens"] += prompt.cache_read
        tokens["cache_creation_5m_input_tokens"] += prompt.cache_creation - prompt.cache_creation_1h
        tokens["cache_creation_1h_input_tokens"] += prompt.cache_creation_1h

    def as_dict(self, brief: bool = False, **extra: Any) -> dict[str, Any]:
        stats = self.prompts.values()
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "stream_errors": self.stream_errors,
            **self.tokens,
            "prompts": {
                "distinct": len(self.prompts),
                "requested_more_than_once": sum(1 for s in stats if s.requests > 1),
                "paid_more_than_once": sum(1 for s in stats if s.paid > 1),
                "extra_paid_calls": sum(s.paid - 1 for s in stats if s.paid > 1),
            },
            **extra,
            "structured": dict(self.structured),
            "batch": {**self.batch, "price_multiplier": BATCH_PRICE_MULTIPLIER},
        }
        if not brief:
            out["prompt_counts"] = {
                key: {"requests": s.requests, "paid": s.paid, "preview": s.preview} for key, s in self.prompts.items()
            }
        return out
