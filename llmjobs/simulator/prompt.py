"""Validation of a Messages request into a :class:`Prompt`, with its token
accounting and prompt-cache identity."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .catalog import KNOWN_MODEL_SET, MAX_OUTPUT_TOKENS, cache_minimum
from .respond import ApiError
from .structured import Structured, parse_structured

__all__ = ["CACHE_TTLS", "Answer", "Prompt", "validate"]

#: cache_control ``ttl`` values and their lifetimes in seconds ("5m" is the default).
CACHE_TTLS = {"5m": 300.0, "1h": 3600.0}
_MAX_BREAKPOINTS = 4
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
    cache_creation: int = 0  # cache writes, both TTLs
    cache_creation_1h: int = 0  # of which written with the 1 h TTL
    cache_read: int = 0
    #: (prefix key, ttl seconds) of every cacheable breakpoint: written or refreshed once admitted
    cache_keys: list[tuple[str, float]] = field(default_factory=list)
    #: output_config.format, tools and tool_choice (None: a plain text request)
    structured: Structured | None = None

    def usage(self) -> dict[str, Any]:
        """The input side of the ``usage`` object."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation - self.cache_creation_1h,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
        }


class Answer(NamedTuple):
    """An answer: its text (for a tool call, the JSON of its input) and, for a
    tool call, the tool's name and input."""

    text: str
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int
    tool_name: str | None = None
    tool_input: Any = None

    def content(self, req_id: str) -> dict[str, Any]:
        """The answer's content block."""
        if self.tool_name is None:
            return {"type": "text", "text": self.text}
        tool_id = "toolu_01" + req_id[8:]
        return {"type": "tool_use", "id": tool_id, "name": self.tool_name, "input": self.tool_input}


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
    """Running character count and prefix hash, and the cache breakpoints:
    (chars up to and including the block, prefix key, ttl name)."""

    __slots__ = ("breakpoints", "hash", "total")

    def __init__(self, model: str) -> None:
        self.total = 0
        # The identity of a prefix: the model and every block up to the breakpoint
        # (canonical JSON without its cache_control), and the prefix's length.
        self.hash = hashlib.sha1(model.encode() + b"\x1e")
        self.breakpoints: list[tuple[int, str, str]] = []

    def add_text(self, text: str, part: bytes) -> None:
        self.total += len(text)
        self.hash.update(part + b"\x1e")

    def add_blocks(self, blocks: list[Any], where: str, role: bytes, *, text_only: bool = False) -> list[str]:
        texts = []
        for j, block in enumerate(blocks):
            if text_only and (not isinstance(block, dict) or block.get("type") != "text"):
                raise _bad(f"{where}.{j}: Input should be a valid text block")
            text = _block_text(block, f"{where}.{j}")
            texts.append(text)
            control = block.get("cache_control")
            plain = {k: v for k, v in block.items() if k != "cache_control"} if control is not None else block
            self.add_text(text, role + orjson.dumps(plain, option=orjson.OPT_SORT_KEYS))
            if control is not None:
                self.breakpoint(control, f"{where}.{j}.cache_control")
        return texts

    def breakpoint(self, control: Any, where: str) -> None:
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            raise _bad(f"{where}: Input tag does not match the expected tag 'ephemeral'")
        ttl = control.get("ttl", "5m")
        if ttl not in CACHE_TTLS:
            raise _bad(f"{where}.ttl: Input should be '5m' or '1h'")
        if ttl == "1h" and any(t == "5m" for _, _, t in self.breakpoints):
            raise _bad(f"{where}: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block")
        key = self.hash.copy().hexdigest() + ":%d" % self.total
        self.breakpoints.append((self.total, key, ttl))
        if len(self.breakpoints) > _MAX_BREAKPOINTS:
            raise _bad(f"A maximum of {_MAX_BREAKPOINTS} blocks with cache_control may be provided. Found more.")


def _system_text(system: Any, chars: _Chars) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        chars.add_text(system, system.encode())
        return system
    if isinstance(system, list):
        return "\n".join(chars.add_blocks(system, "system", b"", text_only=True))
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
                chars.add_text(text, role.encode() + b":" + text.encode())
            else:
                text = "".join(chars.add_blocks(content, f"messages.{i}.content", role.encode() + b":"))
        elif content is None:
            raise _bad(f"messages.{i}.content: Field required")
        else:
            raise _bad(f"messages.{i}.content: Input should be a valid string or list of content blocks")
        if role == "user":
            user_text = text
        elif final_assistant:
            prefill = text
    return user_text, prefill


def validate(
    payload: dict[str, Any],
    prompt_cache: dict[str, float],
    clock: Callable[[], float],
    cache_min_tokens: int = -1,
    no_structured_output: str = "",
) -> Prompt:
    """Check a Messages request the way the API does and account its tokens.
    ``prompt_cache`` (prefix key -> clock time it expires) decides cache reads;
    ``cache_min_tokens`` is the shortest cacheable prefix (-1: the model's own)."""
    model, max_tokens, messages, stream, stops = _check_params(payload)
    system = payload.get("system")
    chars = _Chars(model)
    structured = parse_structured(payload)
    if structured is not None:  # tools, then the format, come before the system prompt
        for part, control, where in structured.parts:
            chars.add_text(part.decode(), part)
            if control is not None:
                chars.breakpoint(control, f"{where}.cache_control")
    system_text = _system_text(system, chars)
    user_text, prefill = _conversation(messages, chars)
    if prefill and structured is not None and structured.schema is not None:
        raise _bad("Prefilling the assistant message is not supported when using output_config.format")
    if model not in KNOWN_MODEL_SET:
        raise ApiError(404, "not_found_error", f"model: {model}")
    if structured is not None and no_structured_output:
        structured.check_model(model, no_structured_output)
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise _bad(
            f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed number "
            f"of output tokens for {model}"
        )
    canonical = orjson.dumps([model, system, messages], option=orjson.OPT_SORT_KEYS)
    if structured is not None:
        canonical += b"".join(part for part, _, _ in structured.parts) + orjson.dumps(
            [structured.choice, structured.choice_name]
        )
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
        structured=structured,
    )
    total_tokens = (chars.total + 3) // 4
    minimum = cache_minimum(model) if cache_min_tokens < 0 else cache_min_tokens
    # A breakpoint whose prefix is shorter than the minimum is not cached (no error).
    cacheable = [(_tokens(c), key, ttl) for c, key, ttl in chars.breakpoints if c > 0 and _tokens(c) >= minimum]
    if cacheable:
        _account_cache(prompt, cacheable, prompt_cache, clock())
        total_tokens -= cacheable[-1][0]
    prompt.input_tokens = max(0, total_tokens)
    return prompt


def _tokens(chars: int) -> int:
    return (chars + 3) // 4


def _account_cache(
    prompt: Prompt, cacheable: list[tuple[int, str, str]], prompt_cache: dict[str, float], now: float
) -> None:
    """The longest prefix still cached is read; the rest, up to the last
    breakpoint, is written, each segment with the TTL of the breakpoint that ends it."""
    read = 0
    start = 0
    for index, (tokens, key, _) in enumerate(cacheable):
        expires = prompt_cache.get(key)
        if expires is not None and now < expires:
            read, start = tokens, index + 1
    prompt.cache_read = read
    written = read
    for tokens, _, ttl in cacheable[start:]:
        prompt.cache_creation += tokens - written
        if ttl == "1h":
            prompt.cache_creation_1h += tokens - written
        written = tokens
    prompt.cache_keys = [(key, CACHE_TTLS[ttl]) for _, key, ttl in cacheable]
