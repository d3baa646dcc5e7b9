"""The budget cap (issue 14): stop dispatching before the job's cost passes ``budget_usd``.

A :class:`BudgetGuard` lives on the runner's event loop. Each call is admitted only
when the money already spent plus the reserved cost of the calls in flight plus
this call's reserve stays within the budget. A call's reserve is its worst case:
its input tokens (estimated from the request's characters, generously) and
``max_tokens`` of output, at the job's price (batch or online). When an answer
arrives its reserve is released and its real cost counted. When the next call
does not fit even with nothing in flight, the job stops: "stopped: budget
reached", the rest left pending, resumable with a higher budget.

Pure Python (no Django); the runner calls it.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from decimal import Decimal
from typing import Any

from .pricing import TokenUsage, price_usage

__all__ = ["BudgetGuard", "estimate_input_tokens", "stopped_message"]

# A token is about 4 characters of English; count 3 so that a reserve is never too small.
CHARS_PER_TOKEN_RESERVE = 3


def estimate_input_tokens(params: Mapping[str, Any], *, chars_per_token: float = CHARS_PER_TOKEN_RESERVE) -> int:
    """A generous estimate of a request's input tokens from its characters."""
    text = json.dumps([params.get("system"), params.get("messages"), params.get("tools")], ensure_ascii=False)
    return int(len(text) / chars_per_token) + 8


class BudgetGuard:
    """Admits calls while spent + reserved stays within ``budget``."""

    def __init__(self, *, model: str, budget: Decimal, spent: Decimal, batch: bool = False) -> None:
        self.model = model
        self.budget = budget
        self.spent = spent
        self.batch = batch
        self.reserved: dict[Hashable, Decimal] = {}
        self.reached = False
        self.unknown_price = False

    @property
    def in_flight(self) -> int:
        return len(self.reserved)

    @property
    def reserved_total(self) -> Decimal:
        return sum(self.reserved.values(), Decimal(0))

    def reserve_for(self, params: Mapping[str, Any]) -> Decimal | None:
        usage = TokenUsage(input_tokens=estimate_input_tokens(params), output_tokens=int(params.get("max_tokens") or 0))
        return price_usage(self.model, usage, batch=self.batch)

    def admit(self, key: Hashable, params: Mapping[str, Any]) -> bool:
        """Reserve this call's worst case if it fits; ``False`` if it does not (yet)."""
        reserve = self.reserve_for(params)
        if reserve is None:
            self.unknown_price = self.reached = True
            return False
        if self.spent + self.reserved_total + reserve > self.budget:
            if not self.reserved:  # nothing in flight will free money: the budget is reached
                self.reached = True
            return False
        self.reserved[key] = reserve
        return True

    def settle(self, key: Hashable, usage: Mapping[str, Any] | None) -> None:
        """An answer (or a failure) arrived: release its reserve, count what it cost."""
        reserve = self.reserved.pop(key, Decimal(0))
        cost = price_usage(self.model, TokenUsage.from_api(usage), batch=self.batch) if usage else Decimal(0)
        self.spent += reserve if cost is None else cost


def stopped_message(guard: BudgetGuard, left: int) -> str:
    if guard.unknown_price:
        return (
            f"Stopped: budget reached: the price of {guard.model} is unknown, so a budget can't be kept; "
            f"{left} item(s) left pending. Remove the budget to run it."
        )
    return (
        f"Stopped: budget reached (${guard.spent:.4f} spent of ${guard.budget:.4f}); {left} item(s) left pending. "
        "Raise the budget and run the job again to resume."
    )
