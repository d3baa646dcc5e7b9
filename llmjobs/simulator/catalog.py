"""The model catalogue: ids the simulator knows (a static copy of anthropic's ``types/model_param.py``
plus a few dated aliases); anything else gets 404 not_found_error."""

from __future__ import annotations

__all__ = ["KNOWN_MODELS", "MAX_OUTPUT_TOKENS", "model_info"]

KNOWN_MODELS: tuple[str, ...] = (
    "claude-fable-5-2",
    "claude-mythos-5-2",
    "claude-haiku-5-5",
    "claude-sonnet-5-5",
    "claude-fable-5-1",
    "claude-opus-5-5",
    "claude-mythos-5-1",
    "claude-sonnet-5",
    "claude-fable-5",
    "claude-mythos-5",
    "claude-opus-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-mythos-preview",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    # dated ids and aliases the real API also answers
    "claude-opus-4-1",
    "claude-opus-4-1-20250805",
    "claude-opus-4-6-20260205",
    "claude-sonnet-4-6-20260217",
)
KNOWN_MODEL_SET = frozenset(KNOWN_MODELS)

#: Largest max_tokens any model accepts here (the real API caps per model).
MAX_OUTPUT_TOKENS = 128_000


def _display_name(model_id: str) -> str:
    parts = model_id.removeprefix("claude-").split("-")
    if parts and parts[-1].isdigit() and len(parts[-1]) == 8:
        parts = parts[:-1]
    family = [p for p in parts if not p.isdigit()]
    version = ".".join(p for p in parts if p.isdigit())
    return " ".join(["Claude", *(p.capitalize() for p in family), version]).strip()


def model_info(model_id: str) -> dict[str, str]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": _display_name(model_id),
        "created_at": "2025-01-01T00:00:00Z",
    }
