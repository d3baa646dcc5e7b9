"""Prices come from genai-prices; unknown models are unknown, never $0."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

from llmjobs.pricing import TokenUsage, model_known, price_totals, price_usage


def test_a_known_model_is_priced_per_million_tokens():
    # claude-haiku-4-5: $1 input, $5 output per million tokens
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=200_000)
    assert price_usage("claude-haiku-4-5", usage) == Decimal("2.000000")


def test_an_unknown_model_has_an_unknown_price_not_zero():
    assert not model_known("my-local-model")
    assert price_usage("my-local-model", TokenUsage(input_tokens=10)) is None
    assert price_totals("my-local-model", TokenUsage(input_tokens=10), requests=3) is None


def test_batch_processing_costs_half():
    usage = TokenUsage(input_tokens=400_000, output_tokens=100_000)
    online = price_usage("claude-sonnet-4-6", usage)
    batch = price_usage("claude-sonnet-4-6", usage, batch=True)
    assert online is not None and batch is not None
    assert batch * 2 == online


def test_cache_reads_are_cheap_and_writes_cost_more():
    plain = price_usage("claude-haiku-4-5", TokenUsage(input_tokens=1_000_000))
    read = price_usage("claude-haiku-4-5", TokenUsage(cache_read_tokens=1_000_000))
    write_5m = price_usage("claude-haiku-4-5", TokenUsage(cache_write_5m_tokens=1_000_000))
    write_1h = price_usage("claude-haiku-4-5", TokenUsage(cache_write_1h_tokens=1_000_000))
    assert (plain, read, write_5m, write_1h) == (Decimal(1), Decimal("0.1"), Decimal("1.25"), Decimal(2))


def test_usage_from_the_api_splits_cache_writes_by_ttl():
    usage = TokenUsage.from_api(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 7,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        }
    )
    assert usage == TokenUsage(10, 5, cache_write_5m_tokens=100, cache_write_1h_tokens=200, cache_read_tokens=7)
    assert TokenUsage.from_api(None) == TokenUsage()


def test_job_totals_are_priced_per_request_so_long_context_tiers_are_not_triggered_by_the_sum():
    # claude-sonnet-4-5 charges more for requests over 200k input tokens; 1,000
    # requests of 3k tokens each must be priced at the base rate.
    totals = TokenUsage(input_tokens=3_000_000, output_tokens=100_000)
    per_request = price_usage("claude-sonnet-4-5", TokenUsage(input_tokens=3_000, output_tokens=100))
    assert per_request is not None
    assert price_totals("claude-sonnet-4-5", totals, requests=1000) == per_request * 1000
    assert price_usage("claude-sonnet-4-5", totals) > per_request * 1000  # the tiered price of one huge request


def test_pricing_imports_no_django():
    code = "import sys, llmjobs.pricing; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
