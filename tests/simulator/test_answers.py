"""Answer generation in-process (no server)."""

from __future__ import annotations

import json

import pytest

from llmjobs.simulator.answers import count_tokens, finish, make_answer


def test_count_tokens_is_ceil_chars_over_four():
    assert [count_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_generic_answers_are_stable_and_sized():
    one = make_answer("", "Explain retries", "")
    assert one == make_answer("", "Explain retries", "")
    assert 20 <= count_tokens(one) <= 121
    sized = make_answer("", "Explain retries", "", answer_tokens=500)
    assert 480 <= count_tokens(sized) <= 501
    assert make_answer("Be terse.", "Explain retries", "") != one


@pytest.mark.parametrize(
    ("system", "prompt", "expected"),
    [
        ("", "Sentiment? Reply with one of: positive, negative.\nText: awful, broken, a waste", "negative"),
        ("", "Answer (yes|no): is the sky green? Text: the sky is blue", {"yes", "no"}),
        ("Classify as one of: A, B, C.", "something unrelated", {"A", "B", "C"}),
        ("", "Classify the language. Options: English, French\nText: bonjour mes amis, French greeting", "French"),
    ],
)
def test_classification(system, prompt, expected):
    answer = make_answer(system, prompt, "")
    if isinstance(expected, set):
        assert answer in expected
    else:
        assert answer == expected


def test_summary_from_system_instruction():
    document = "First sentence is here. " + "Second sentence adds more detail about things. " * 6
    summary = make_answer("Summarize the user's text in one sentence.", document, "")
    assert summary.startswith("First sentence is here.")
    assert len(summary) <= len(document) / 2


def test_summary_of_one_long_sentence_is_still_shorter():
    document = "tl;dr: " + " ".join(f"word{i}" for i in range(200))
    summary = make_answer("", document, "")
    assert 0 < len(summary) < (len(document) - 7) / 2


def test_extraction_fallback_lists_entities_and_numbers():
    data = json.loads(make_answer("", "Extract information: Alice met Bob Jones in Paris with 3 friends.", ""))
    assert "Bob Jones" in data["entities"] and "Paris" in data["entities"]
    assert data["numbers"] == ["3"]


def test_finish_applies_stop_sequences_before_max_tokens():
    text = "alpha beta gamma delta"
    assert finish(text, 100, None) == (text, "end_turn", None, 6)
    assert finish(text, 100, ["gamma", "beta"]) == ("alpha ", "stop_sequence", "beta", 2)
    assert finish(text, 2, None) == ("alpha be", "max_tokens", None, 2)
    assert finish(text, 1, ["delta"]) == ("alph", "max_tokens", None, 1)  # stop beyond the token budget
    assert finish(text, 100, ["", "zzz"]) == (text, "end_turn", None, 6)
