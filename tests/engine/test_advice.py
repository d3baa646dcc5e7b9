"""The max_tokens hint (a pure function)."""

from __future__ import annotations

import random

from llmjobs.engine.advice import max_tokens_advice, suggest_max_tokens


def outputs(n=200, lo=20, hi=80, seed=1):
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


def test_the_issue_example_when_output_tokens_bind():
    outs = [52] * 100
    # reservation held the whole refill period: the cost is the reservation
    hint = max_tokens_advice(outs, 1024, "output_tokens")
    assert hint == "answers average 52 tokens; max_tokens 128 would run ≈ 8\u00d7 faster"
    # held a third of it (20 s of a 60 s bucket): (52 + 972/3) / (52 + 76/3)
    hint = max_tokens_advice(outs, 1024, "output_tokens", capacity=30_000, rate=500, latency=20.0)
    assert hint == "answers average 52 tokens; max_tokens 128 would run ≈ 5\u00d7 faster"
    outs = outputs()
    hint = max_tokens_advice(outs, 1024, "output_tokens")
    assert hint is not None
    assert hint.startswith("answers average 5") and "max_tokens 256 would run ≈ " in hint


def test_no_hint_unless_the_output_bucket_bound_the_run():
    outs = outputs()
    assert max_tokens_advice(outs, 1024, "requests") is None
    assert max_tokens_advice(outs, 1024, "input_tokens") is None
    assert max_tokens_advice(outs, 1024, None) is None


def test_no_hint_when_max_tokens_is_already_close_or_answers_hit_it():
    assert max_tokens_advice(outputs(), 256, "output_tokens") is None
    assert max_tokens_advice([1024] * 50 + [30] * 50, 1024, "output_tokens") is None
    assert max_tokens_advice(outputs(n=5), 1024, "output_tokens") is None  # too few to say
    assert max_tokens_advice([], 1024, "output_tokens") is None


def test_no_hint_when_the_reservation_is_held_briefly():
    # a huge bucket refilling slowly, calls of 0.1 s: reservations barely matter
    assert max_tokens_advice(outputs(), 1024, "output_tokens", capacity=400_000, rate=100, latency=0.1) is None


def test_suggestion_leaves_room_for_every_answer_seen():
    assert suggest_max_tokens([10, 20, 30]) == 64
    assert suggest_max_tokens(outputs()) == 256  # 2 x p99 (80) = 160 -> 256
    assert suggest_max_tokens([400]) == 1024


def test_stats_expose_the_prediction_and_the_binding_budget():
    from llmjobs.engine import EngineStats, Governor

    g = Governor(clock=lambda: 0.0, otpm=6000)
    st = EngineStats(g)
    assert st.predicted_output is None and st.binding is None
    t = g.acquire(0, 1000)
    g.on_success(t, 0, 40)
    assert st.predicted_output == 40
    assert g.delay(0, 1000) > 0  # the output budget holds the next call back
    assert st.binding == "output_tokens"
