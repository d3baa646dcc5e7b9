"""Validation of a Messages request into a :class:`Prompt`, with its token
accounting and prompt-cache identity."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .catalog import KNOWN_MODEL_SET, MAX_OUTPUT_TOKENS
from .respond import ApiError

__all__ = ["CACHE_TTL", "Answer", "Prompt", "validate"]

CACHE_TTL = 300.0
_REJECTED_PARAMS = ("temperature", "top_p", "top_k")


@dataclass(slots=True)
class Prompt:
    """A validated /v1/messages request, with its token accounting."""

    model: str
    max_tokens: int
    stream: bool
    stop_sequences: list[str] | None
    system_text: str
    user_text: str
    prefill: str
    prompt_key: str
    preview: str
    input_tokens: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    cache_key: str | None = None
    cache_prefix_tokens: int = 0

    def usage(self) -> dict[str, int]:
        """The input side of the ``usage`` object."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
        }


class Answer(NamedTuple):
    text: str
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def _block_text(block: Any, where: str) -> str:
    """Text of one content block (non-text blocks count as their JSON)."""
    if not isinstance(block, dict):
        raise _bad(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type: Field required")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text: Field required")
        if not text:
            raise _bad(f"{where}: text content blocks must be non-empty")
        return text
    if kind == "tool_result":
        inner = block.get("content")
        if isinstance(inner, str):
            return inner
        if isinstance(inner, list):
            return "".join(_block_text(b, f"{where}.content.{i}") for i, b in enumerate(inner))
        return ""
    return orjson.dumps(block).decode()


def _check_params(payload: dict[str, Any]) -> tuple[str, int, list[Any], bool, list[str] | None]:
    for name in _REJECTED_PARAMS:
        if name in payload:
            raise _bad(f"{name}: This parameter is not supported by the current API version.")
    model = payload.get("model")
    if model is None:
        raise _bad("model: Field required")
    if not isinstance(model, str) or not model:
        raise _bad("model: Input should be a valid string")
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _bad("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _bad("max_tokens: Input should be greater than or equal to 1")
    messages = payload.get("messages")
    if messages is None:
        raise _bad("messages: Field required")
    if not isinstance(messages, list):
        raise _bad("messages: Input should be a valid list")
    if not messages:
        raise _bad("messages: at least one message is required")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")
    stops = payload.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _bad("stop_sequences: Input should be a valid list of strings")
    return model, max_tokens, messages, stream, stops


class _Chars:
    """Running character count and the end of the last cache breakpoint."""

    __slots__ = ("prefix", "total")

    def __init__(self) -> None:
        self.total = 0
        self.prefix = -1  # chars up to and including the last cache_control block

    def add_blocks(self, blocks: list[Any], where: str, *, text_only: bool = False) -> list[str]:
        texts = []
        for j, block in enumerate(blocks):
            if text_only and (not isinstance(block, dict) or block.get("type") != "text"):
                raise _bad(f"{where}.{j}: Input should be a valid text block")
            text = _block_text(block, f"{where}.{j}")
            texts.append(text)
            self.total += len(text)
            if block.get("cache_control") is not None:
                self.prefix = self.total
        return texts


def _system_text(system: Any, chars: _Chars) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        chars.total = len(system)
        return system
    if isinstance(system, list):
        return "\n".join(chars.add_blocks(system, "system", text_only=True))
    raise _bad("system: Input should be a valid string or list of text blocks")


def _conversation(messages: list[Any], chars: _Chars) -> tuple[str, str]:
    """Check that roles alternate, the first is "user" and content is non-empty;
    return the last user text and the prefill (a final assistant message)."""
    user_text = ""
    prefill = ""
    previous_role = None
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            if role is None:
                raise _bad(f"messages.{i}.role: Field required")
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _bad('messages: first message must use the "user" role')
        if role == previous_role:
            raise _bad(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        previous_role = role
        content = message.get("content")
        final_assistant = i == last and role == "assistant"
        if isinstance(content, str | list):
            if not content and not final_assistant:
                raise _bad(
                    f"messages.{i}: all messages must have non-empty content "
                    "except for the optional final assistant message"
                )
            if isinstance(content, str):
                text = content
                chars.total += len(text)
            else:
                text = "".join(chars.add_blocks(content, f"messages.{i}.content"))
        elif content is None:
            raise _bad(f"messages.{i}.content: Field required")
        else:
            raise _bad(f"messages.{i}.content: Input should be a valid string or list of content blocks")
        if role == "user":
            user_text = text
        elif final_assistant:
            prefill = text
    return user_text, prefill


def validate(payload: dict[str, Any], prompt_cache: dict[str, float], clock: Callable[[], float]) -> Prompt:
    """Check a Messages request the way the API does and account its tokens;
    ``prompt_cache`` (prefix key -> time last written) decides cache reads."""
    model, max_tokens, messages, stream, stops = _check_params(payload)
    system = payload.get("system")
    chars = _Chars()
    system_text = _system_text(system, chars)
    user_text, prefill = _conversation(messages, chars)
    if model not in KNOWN_MODEL_SET:
        raise ApiError(404, "not_found_error", f"model: {model}")
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise _bad(
            f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed number "
            f"of output tokens for {model}"
        )
    canonical = orjson.dumps([model, system, messages], option=orjson.OPT_SORT_KEYS)
    prompt = Prompt(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        stop_sequences=stops,
        system_text=system_text,
        user_text=user_text,
        prefill=prefill,
        prompt_key=hashlib.sha1(canonical).hexdigest()[:16],
        preview=(user_text or system_text)[:40],
    )
    total_tokens = (chars.total + 3) // 4
    if chars.prefix > 0:
        prefix_tokens = (chars.prefix + 3) // 4
        prompt.cache_prefix_tokens = prefix_tokens
        # The cached prefix is everything up to the breakpoint: identify it by
        # model + the canonical JSON of the request truncated at that point.
        prompt.cache_key = _prefix_key(model, system, messages, chars.prefix)
        seen = prompt_cache.get(prompt.cache_key)
        if seen is not None and clock() - seen < CACHE_TTL:
            prompt.cache_read = prefix_tokens
        else:
            prompt.cache_creation = prefix_tokens
        total_tokens -= prefix_tokens
    prompt.input_tokens = max(0, total_tokens)
    return prompt


def _prefix_key(model: str, system: Any, messages: list[Any], prefix_chars: int) -> str:
    """Identity of the cached prefix: model + every block up to the last
    block that carries ``cache_control``."""
    parts: list[bytes] = [model.encode()]
    last = 0
    if isinstance(system, list):
        for block in system:
            parts.append(orjson.dumps(block, option=orjson.OPT_SORT_KEYS))
            if block.get("cache_control") is not None:
                last = len(parts)
    elif isinstance(system, str):
        parts.append(system.encode())
    for message in messages:
        content = message["content"]
        role = message["role"].encode() + b":"
        if isinstance(content, str):
            parts.append(role + content.encode())
            continue
        for block in content:
            parts.append(role + orjson.dumps(block, option=orjson.OPT_SORT_KEYS))
            if block.get("cache_control") is not None:
                last = len(parts)
    return hashlib.sha1(b"\x1e".join(parts[:last]) + b"%d" % prefix_chars).hexdigest()
