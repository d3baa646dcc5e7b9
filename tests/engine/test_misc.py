"""Small pieces: token estimate, stats, config validation, public API."""

from __future__ import annotations

import pytest

import llmjobs.engine as engine_pkg
from llmjobs.engine import EngineConfig, EngineStats, Governor, estimate_input_tokens


def test_estimate_input_tokens_counts_system_and_all_message_text():
    params = {
        "system": [{"type": "text", "text": "x" * 400}],
        "messages": [
            {"role": "user", "content": "y" * 800},
            {"role": "assistant", "content": [{"type": "text", "text": "z" * 40}]},
        ],
    }
    assert estimate_input_tokens(params) == (400 + 800 + 40 + 24 + 3) // 4
    assert estimate_input_tokens({"messages": []}) == 1


def test_stats_read_live_values_from_the_governor():
    clock = iter(range(100)).__next__
    g = Governor(clock=lambda: 5.0, initial_concurrency=7)
    st = EngineStats(g)
    st.started_at = 2.0
    g.acquire(0, 0)
    d = st.as_dict()
    assert d["in_flight"] == 1 and d["ceiling"] == 7 and d["elapsed"] == 3.0
    assert d["limits"] == {"rpm": None, "itpm": None, "otpm": None}
    assert clock  # unused


def test_config_validation():
    with pytest.raises(ValueError):
        EngineConfig(max_concurrency=0)
    with pytest.raises(ValueError):
        EngineConfig(max_attempts=0)
    assert EngineConfig(max_concurrency=8, initial_concurrency=100).initial_concurrency == 8


def test_public_api_is_explicit():
    for name in engine_pkg.__all__:
        assert hasattr(engine_pkg, name), name
    for name in (
        "Call",
        "Outcome",
        "RunAborted",
        "Engine",
        "run_calls",
        "EngineConfig",
        "EngineStats",
        "Governor",
        "make_client",
        "stream_text",
        "TextStream",
        "RetryPolicy",
        "classify",
    ):
        assert name in engine_pkg.__all__
