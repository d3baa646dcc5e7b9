"""Answers checked by the caller, repaired once (structured output).

A :class:`~llmjobs.engine.Call` may carry ``validate(text, stop_reason)``: ``None``
when the answer is acceptable, else one line saying why. An unacceptable answer
(invalid JSON, a schema error, an answer cut at ``max_tokens``) is tried **once**
more with the answer and the error added to the conversation; if that answer is
unacceptable too, the item fails with ``error_type="invalid_output"``, the raw
text kept on the outcome. Tokens of both attempts are counted on the outcome.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._types import FAILED, Outcome

__all__ = ["INVALID_OUTPUT", "add_usage", "invalid_outcome", "repair_params", "tool_answer"]

INVALID_OUTPUT = "invalid_output"


def repair_params(params: Mapping[str, Any], text: str | None, error: str) -> dict[str, Any]:
    """``params`` with the invalid answer and the error appended to the conversation."""
    messages = list(params.get("messages") or ())
    messages.append({"role": "assistant", "content": text if text and text.strip() else "(no answer)"})
    messages.append(
        {
            "role": "user",
            "content": (
                f"That answer is not valid: {error}. "
                "Answer again with only the JSON object that the schema describes, complete and nothing else."
            ),
        }
    )
    repaired = dict(params)
    repaired["messages"] = messages
    return repaired


def add_usage(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Token counts of two attempts added up (numbers summed, other values from ``after``)."""
    if not before:
        return dict(after) if after else None
    total: dict[str, Any] = dict(before)
    for key, value in (after or {}).items():
        old = total.get(key)
        if isinstance(value, int) and isinstance(old, int) and not isinstance(value, bool):
            total[key] = old + value
        else:
            total[key] = value
    return total


def invalid_outcome(outcome: Outcome, error: str) -> Outcome:
    """The final outcome of an answer that stayed invalid: failed, raw text kept."""
    outcome.status = FAILED
    outcome.error_type = INVALID_OUTPUT
    outcome.error_message = f"the answer does not match the output schema after one repair attempt: {error}"
    return outcome


def tool_answer(content: Sequence[Any]) -> list[str]:
    """The input of the first ``tool_use`` block as JSON text (a forced tool's answer), or ``[]``."""
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            return [json.dumps(block.get("input"), ensure_ascii=False)]
    return []
