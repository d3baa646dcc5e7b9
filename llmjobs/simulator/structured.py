"""Structured output and tool use, the request side: ``output_config.format``,
``tools`` and ``tool_choice``, checked as the API does, and which tool an answer
calls. The answers themselves are made by :mod:`.json_answers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .catalog import lacks_structured_output
from .respond import ApiError
from .schema import check_schema, check_structure

__all__ = ["Structured", "parse_structured"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_CHOICES = ("auto", "any", "tool", "none")
_TOOL_KEYS = frozenset(
    {
        "name", "input_schema", "description", "type", "strict", "cache_control", "allowed_callers",
        "defer_loading", "eager_input_streaming", "input_examples",
    }
)  # fmt: skip


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def _no_extra(value: dict[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    for key in value:
        if key not in allowed:
            raise _bad(f"{where}.{key}: Extra inputs are not permitted")


@dataclass(slots=True)
class Structured:
    """The structured-output side of a request."""

    schema: dict[str, Any] | None = None  # output_config.format.schema
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> input_schema, in order
    choice: str = "auto"  # tool_choice.type
    choice_name: str | None = None  # tool_choice.name when "tool"
    #: canonical JSON of each tool, then of the format, with the tool's cache_control
    parts: list[tuple[bytes, Any, str]] = field(default_factory=list)

    strict_tools: list[str] = field(default_factory=list)  # names of tools with strict: true

    def check_model(self, model: str, unsupported: str) -> None:
        """400 if ``model`` is one of ``unsupported`` (comma-separated ids or prefixes)
        and the request asks for structured outputs (a format or a strict tool)."""
        if not lacks_structured_output(model, unsupported):
            return
        if self.schema is not None:
            raise _bad(f"output_config.format: structured outputs are not supported by the model {model}")
        if self.strict_tools:
            raise _bad(f"tools: strict tools are not supported by the model {model} ({self.strict_tools[0]!r})")

    def tool_for(self, text: str) -> str | None:
        """The tool the answer calls: the forced one; for ``any`` the one the
        prompt names (else the first); for ``auto`` the one the prompt names (else none)."""
        if self.choice == "tool":
            return self.choice_name
        if not self.tools or self.choice == "none":
            return None
        low = text.lower()
        for name in self.tools:
            if name.lower() in low or name.replace("_", " ").lower() in low:
                return name
        return next(iter(self.tools)) if self.choice == "any" else None


def parse_structured(payload: dict[str, Any]) -> Structured | None:
    """``output_config``, ``tools`` and ``tool_choice`` of a request, checked; None if absent."""
    config = payload.get("output_config")
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if config is None and tools is None and choice is None:
        return None
    out = Structured()
    if config is not None:
        _output_config(config, out)
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            _tool(tool, i, out)
    if choice is not None:
        _tool_choice(choice, out)
    if out.schema is not None:
        out.parts.append((b"format:" + orjson.dumps(out.schema, option=orjson.OPT_SORT_KEYS), None, ""))
    return out


def _output_config(config: Any, out: Structured) -> None:
    if not isinstance(config, dict):
        raise _bad("output_config: Input should be a valid dictionary")
    _no_extra(config, {"effort", "format"}, "output_config")
    effort = config.get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise _bad("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _bad("output_config.format: Input should be a valid dictionary")
    if fmt.get("type") != "json_schema":
        raise _bad("output_config.format.type: Input should be 'json_schema'")
    _no_extra(fmt, {"type", "schema"}, "output_config.format")
    if "schema" not in fmt:
        raise _bad("output_config.format.schema: Field required")
    check_schema(fmt["schema"], "output_config.format.schema")
    out.schema = fmt["schema"]


def _tool(tool: Any, i: int, out: Structured) -> None:
    where = f"tools.{i}"
    if not isinstance(tool, dict):
        raise _bad(f"{where}: Input should be a valid dictionary")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise _bad(f"{where}.type: server tools ({kind!r}) are not supported by the simulator; use a custom tool")
    _no_extra(tool, _TOOL_KEYS, where)
    name = tool.get("name")
    if not isinstance(name, str):
        raise _bad(f"{where}.name: Field required")
    if not _TOOL_NAME.match(name):
        raise _bad(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
    if name in out.tools:
        raise _bad(f"tools: Tool names must be unique (duplicate: {name!r})")
    if "input_schema" not in tool:
        raise _bad(f"{where}.input_schema: Field required")
    schema = tool["input_schema"]
    if tool.get("strict"):
        check_schema(schema, f"{where}.input_schema", root_object=True)
        out.strict_tools.append(name)
    elif not isinstance(schema, dict) or schema.get("type") != "object":
        raise _bad(f"{where}.input_schema.type: Input should be 'object'")
    else:
        check_structure(schema, f"{where}.input_schema")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{where}.description: Input should be a valid string")
    out.tools[name] = schema
    plain = {k: v for k, v in tool.items() if k != "cache_control"}
    out.parts.append((b"tool:" + orjson.dumps(plain, option=orjson.OPT_SORT_KEYS), tool.get("cache_control"), where))


def _tool_choice(choice: Any, out: Structured) -> None:
    if not isinstance(choice, dict):
        raise _bad("tool_choice: Input should be a valid dictionary")
    kind = choice.get("type")
    if kind not in _CHOICES:
        raise _bad("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    _no_extra(
        choice,
        {"type", "name", "disable_parallel_tool_use"} if kind == "tool" else {"type", "disable_parallel_tool_use"},
        "tool_choice",
    )
    if kind in ("any", "tool") and not out.tools:
        raise _bad(f"tool_choice: type {kind!r} requires at least one tool in tools")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice.name: Field required")
        if name not in out.tools:
            raise _bad(f"tool_choice.name: no tool named {name!r} in tools")
        out.choice_name = name
    out.choice = str(kind)
