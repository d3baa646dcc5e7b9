"""What tokens cost, from genai-prices (the maintained price package), not a hand-written table.

Plain data in, ``Decimal`` USD out; imports no Django. Anthropic reports
``input_tokens`` *without* the cached part, while genai-prices counts every
input token, so the cache writes (5-minute and 1-hour) and reads are added back
before pricing. A model the package does not know has an *unknown* price
(``None``), never $0. The Message Batches API's discount is the package's own
``processing: batch`` price variant.

Long-context tiers apply per request, so :func:`price_usage` prices one
request's usage, and :func:`price_totals` prices a job's sums as ``requests``
requests of the average size (exact for untiered prices).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

__all__ = ["TokenUsage", "model_known", "price_totals", "price_usage"]

_QUANTUM = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts as the Messages API reports them (``input_tokens`` excludes the cache)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    @classmethod
    def from_api(cls, usage: Mapping[str, Any] | None) -> TokenUsage:
        """From a Messages API ``usage`` object (a dict), with the cache-write split when present."""
        if not usage:
            return cls()
        written = int(usage.get("cache_creation_input_tokens") or 0)
        split = usage.get("cache_creation") or {}
        one_hour = int(split.get("ephemeral_1h_input_tokens") or 0) if isinstance(split, Mapping) else 0
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_write_5m_tokens=max(0, written - one_hour),
            cache_write_1h_tokens=one_hour,
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
        )


@lru_cache(maxsize=4096)  # a job's requests repeat their token counts; genai-prices costs ~0.5 ms a call
def _calc(model: str, usage: TokenUsage, batch: bool) -> Decimal | None:
    from genai_prices import Usage, calc_price

    written = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    total_in = usage.input_tokens + written + usage.cache_read_tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package_usage = Usage(
            input_tokens=total_in,
            output_tokens=usage.output_tokens,
            cache_write_tokens=written or None,
            cache_write_1h_tokens=usage.cache_write_1h_tokens or None,
            cache_read_tokens=usage.cache_read_tokens or None,
        )
        try:
            result = calc_price(
                package_usage,
                model,
                provider_id="anthropic",
                price_context={"processing": "batch"} if batch else None,
            )
        except LookupError:
            return None
    return Decimal(result.total_price)


@lru_cache(maxsize=64)
def model_known(model: str) -> bool:
    """Does genai-prices have a price for this model?"""
    return _calc(model, TokenUsage(input_tokens=1), False) is not None


def price_usage(model: str, usage: TokenUsage, *, batch: bool = False) -> Decimal | None:
    """USD for one request's usage; ``None`` when the model's price is unknown."""
    if not model_known(model):
        return None
    price = _calc(model, usage, batch)
    return None if price is None else price.quantize(_QUANTUM)


def price_totals(model: str, totals: TokenUsage, *, requests: int, batch: bool = False) -> Decimal | None:
    """USD for a job's summed usage over ``requests`` requests; ``None`` when unknown."""
    if not model_known(model):
        return None
    if requests <= 1:
        return price_usage(model, totals, batch=batch)
    # price the average request, so per-request long-context tiers are not triggered by the sum
    n = requests
    average = TokenUsage(
        input_tokens=round(totals.input_tokens / n),
        output_tokens=round(totals.output_tokens / n),
        cache_write_5m_tokens=round(totals.cache_write_5m_tokens / n),
        cache_write_1h_tokens=round(totals.cache_write_1h_tokens / n),
        cache_read_tokens=round(totals.cache_read_tokens / n),
    )
    unit = _calc(model, average, batch)
    if unit is None:
        return None
    # the rounding of the average is corrected by pricing the remainder at the average's rate
    return (unit * n).quantize(_QUANTUM)
