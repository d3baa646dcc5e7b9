"""The model catalogue: ids the simulator knows (a static copy of anthropic's ``types/model_param.py``
plus a few dated aliases); anything else gets 404 not_found_error."""

from __future__ import annotations

from typing import Any

__all__ = ["KNOWN_MODELS", "MAX_OUTPUT_TOKENS", "cache_minimum", "lacks_structured_output", "model_info"]

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


#: Minimum cacheable prefix, in tokens, from Anthropic's prompt-caching docs;
#: a cache_control breakpoint on a shorter prefix is ignored (no error, no cache).
_CACHE_MINIMUM = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
}
#: Models the docs do not list (newer ones): by family, as the latest listed model of it.
_CACHE_MINIMUM_FAMILY = {"opus": 4096, "sonnet": 2048, "haiku": 4096}


def cache_minimum(model_id: str) -> int:
    """The shortest prefix (tokens) that ``model_id`` caches."""
    for prefix, tokens in _CACHE_MINIMUM.items():
        if model_id.startswith(prefix):
            return tokens
    family = next((f for f in _CACHE_MINIMUM_FAMILY if f in model_id), None)
    return _CACHE_MINIMUM_FAMILY[family] if family else 4096


def _display_name(model_id: str) -> str:
    parts = model_id.removeprefix("claude-").split("-")
    if parts and parts[-1].isdigit() and len(parts[-1]) == 8:
        parts = parts[:-1]
    family = [p for p in parts if not p.isdigit()]
    version = ".".join(p for p in parts if p.isdigit())
    return " ".join(["Claude", *(p.capitalize() for p in family), version]).strip()


def lacks_structured_output(model_id: str, unsupported: str) -> bool:
    """Is ``model_id`` one of ``unsupported`` (comma-separated ids or id prefixes)?"""
    return any(model_id.startswith(p) for p in unsupported.split(",") if p)


def _yes(supported: bool = True) -> dict[str, bool]:
    return {"supported": supported}


def model_info(model_id: str, structured: bool = True) -> dict[str, Any]:
    """A ModelInfo, with ``capabilities`` (``structured_outputs`` as configured)."""
    capabilities = {
        "batch": _yes(),
        "citations": _yes(),
        "code_execution": _yes(False),
        "context_management": _yes(False),
        "effort": {
            "supported": False,
            "low": _yes(False),
            "medium": _yes(False),
            "high": _yes(False),
            "max": _yes(False),
        },
        "image_input": _yes(False),
        "pdf_input": _yes(False),
        "server_tools": {"supported": False, "code_execution": _yes(False), "web_search": _yes(False)},
        "structured_outputs": _yes(structured),
        "thinking": {
            "supported": False,
            "types": {k: _yes(False) for k in ("adaptive", "between_tools", "disabled", "enabled")},
        },
    }
    return {
        "type": "model",
        "id": model_id,
        "display_name": _display_name(model_id),
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
        "max_tokens": MAX_OUTPUT_TOKENS,
        "capabilities": capabilities,
    }
