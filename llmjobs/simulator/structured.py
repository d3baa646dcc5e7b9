"""Structured output and tool use: the request side (``output_config.format``,
``tools``, ``tool_choice``, checked as the API does) and deterministic,
schema-valid JSON that follows the prompt where it can.

* an ``enum`` gets the value the prompt points at (a classification picks its
  label, as plain answers do), else one chosen by hash;
* a string gets what the document holds for a field of that name (emails for
  "email", names for "customer", dates for "date", ...), else a short phrase of it;
* integers and numbers come from the document's numbers, booleans from whether the
  field's word appears; arrays hold 1-3 items; every property is filled.

``invalid`` (the ``invalid_output`` fault) spoils an answer on purpose: one field
of the wrong type, a required field missing, or prose before the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .answers import classify
from .extraction import find_for
from .generic import digest
from .respond import ApiError
from .schema import check_schema, resolve

__all__ = ["PROSE", "Structured", "generate", "invalidate", "parse_structured"]

#: What an ``invalid_output`` answer in prose puts before the JSON.
PROSE = "Sure! Here is the JSON you asked for:\n\n"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_CHOICES = ("auto", "any", "tool", "none")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][\w'-]*")
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?![\w.-])")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_CAPS = re.compile(r"\b[A-Z][\w-]*[a-z][\w-]*(?:[ \t]+(?:[A-Z][\w-]*|\d+\b))*")
#: fields named so get the document's proper names ("SuperBlender 3000")
_NAMED = ("product", "brand", "item", "model", "subject", "topic", "title", "vendor", "service")


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


@dataclass(slots=True)
class Structured:
    """The structured-output side of a request."""

    schema: dict[str, Any] | None = None  # output_config.format.schema
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> input_schema, in order
    choice: str = "auto"  # tool_choice.type
    choice_name: str | None = None  # tool_choice.name when "tool"
    #: canonical JSON of each tool, then of the format, with the tool's cache_control
    parts: list[tuple[bytes, Any, str]] = field(default_factory=list)

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
    elif not isinstance(schema, dict) or schema.get("type") != "object":
        raise _bad(f"{where}.input_schema.type: Input should be 'object'")
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


# --------------------------------------------------------------------------- generation
class _Gen:
    def __init__(self, root: dict[str, Any], system: str, user: str) -> None:
        self.root = root
        self.document = user or system
        self.prompt = f"{system}\n{user}" if system else user
        self.sentences = [s.strip() for s in _SENTENCES.split(self.document) if _WORD.search(s)]
        self.numbers = _NUMBER.findall(_DATE.sub(" ", self.document))
        self.names = _proper(self.document)

    def value(self, schema: Any, path: str, name: str, index: int = 0) -> Any:
        if not isinstance(schema, dict):
            return None
        schema = resolve(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.enum(schema["enum"], path)
        if "anyOf" in schema:
            variants = [v for v in schema["anyOf"] if isinstance(v, dict)]
            best = next((v for v in variants if resolve(v, self.root).get("type") != "null"), variants[0])
            return self.value(best, path, name, index)
        if "allOf" in schema:
            return self.value(_merge(schema, self.root), path, name, index)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties") or {}
            return {key: self.value(sub, f"{path}.{key}", key) for key, sub in props.items()}
        if kind == "array":
            return self.array(schema, path, name)
        if kind == "string":
            return self.string(schema, path, name, index)
        if kind in ("integer", "number"):
            return self.number(schema, path, kind == "integer", index)
        if kind == "boolean":
            return self.boolean(path, name)
        return None

    def enum(self, values: list[Any], path: str) -> Any:
        labels = [v for v in values if isinstance(v, str)]
        if len(labels) >= 2:
            return classify(labels, self.document)
        low = self.prompt.lower()
        for v in values:
            if re.search(r"(?<!\w)" + re.escape(str(v).lower()) + r"(?!\w)", low):
                return v
        return values[digest(self.prompt + path) % len(values)]

    def array(self, schema: dict[str, Any], path: str, name: str) -> list[Any]:
        count = 1 + digest(self.prompt + path) % 3
        if isinstance(schema.get("maxItems"), int):  # non-strict tools only
            count = max(0, min(count, schema["maxItems"]))
        items = schema.get("items", {"type": "string"})
        singular = name[:-1] if name.endswith("s") and not name.endswith("ss") else name
        return [self.value(items, f"{path}[{i}]", singular, i) for i in range(count)]

    def string(self, schema: dict[str, Any], path: str, name: str, index: int) -> str:
        fmt = schema.get("format")
        h = digest(self.prompt + path)
        if fmt in _FORMATS:
            if fmt == "date" and (dates := _DATE.findall(self.document)):
                return str(dates[index % len(dates)])
            if fmt == "email" and (emails := find_for("email", self.document)):
                return emails[index % len(emails)]
            return _FORMATS[fmt](h)
        found = find_for(name, self.document) if name else None
        if not found and any(w in name.lower() for w in _NAMED):
            found = self.names
        text = found[index % len(found)] if found else self.phrase(h, name)
        limit = schema.get("maxLength")
        return text[:limit] if isinstance(limit, int) and limit > 0 else text

    def phrase(self, h: int, name: str) -> str:
        """A short phrase of the document: its first sentence for a reason or a
        summary, else some words of a sentence chosen by hash."""
        if not self.sentences:
            return name.replace("_", " ") or "n/a"
        long = any(w in name.lower() for w in ("reason", "summary", "explanation", "description", "why", "rationale"))
        sentence = self.sentences[0 if long else h % len(self.sentences)]
        words = sentence.split()
        size = 12 if long else 2 + h % 4
        start = 0 if long or len(words) <= size else (h >> 8) % (len(words) - size + 1)
        return " ".join(words[start : start + size]).strip(" ,;:.!?\"'")

    def number(self, schema: dict[str, Any], path: str, integer: bool, index: int) -> int | float:
        h = digest(self.prompt + path)
        pool = [float(n) for n in self.numbers if not integer or "." not in n]
        value: float = pool[(h + index) % len(pool)] if pool else float(1 + h % 10)
        low, high = schema.get("minimum"), schema.get("maximum")  # non-strict tools only
        if isinstance(low, int | float) and value < low:
            value = float(low)
        if isinstance(high, int | float) and value > high:
            value = float(high)
        return int(value) if integer else value

    def boolean(self, path: str, name: str) -> bool:
        words = [w for w in re.split(r"[_\W]+", name.lower()) if w and w not in ("is", "has", "contains", "needs")]
        if words:
            return any(re.search(r"(?<!\w)" + re.escape(w), self.document.lower()) for w in words)
        return digest(self.prompt + path) % 2 == 0


_FORMATS: dict[str, Callable[[int], str]] = {
    "date-time": lambda h: "2026-%02d-%02dT%02d:%02d:00Z" % (1 + h % 12, 1 + h % 28, h % 24, h % 60),
    "date": lambda h: "2026-%02d-%02d" % (1 + h % 12, 1 + h % 28),
    "time": lambda h: "%02d:%02d:00" % (h % 24, h % 60),
    "duration": lambda h: "PT%dM" % (1 + h % 90),
    "email": lambda h: "user%d@example.com" % (h % 1000),
    "hostname": lambda h: "host%d.example.com" % (h % 1000),
    "uri": lambda h: "https://example.com/item/%d" % (h % 10000),
    "ipv4": lambda h: "192.0.2.%d" % (1 + h % 254),
    "ipv6": lambda h: "2001:db8::%x" % (1 + h % 65535),
    "uuid": lambda h: (
        "%08x-%04x-4%03x-8%03x-%012x" % (h >> 32, (h >> 16) & 0xFFFF, h & 0xFFF, (h >> 12) & 0xFFF, h & 0xFFFFFFFFFFFF)
    ),
}


def _proper(document: str) -> list[str]:
    """Capitalised names that do not merely start a sentence, in order, distinct."""
    names: list[str] = []
    for match in _CAPS.finditer(document):
        text = match.group()
        before = document[: match.start()].rstrip()
        if not before or before[-1] in ".!?:\n\"'":  # a sentence start: drop its first word
            text = text.partition(" ")[2].strip()
            if not text or not text[0].isupper():
                continue
        if text not in names:
            names.append(text)
    return names


def _merge(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """An ``allOf`` as one schema: the union of its parts' properties and required."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = resolve(part, root) if isinstance(part, dict) else {}
        if "allOf" in part:
            part = _merge(part, root)
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def generate(schema: dict[str, Any], system: str, user: str) -> Any:
    """A deterministic value valid under ``schema`` that follows the prompt."""
    return _Gen(schema, system, user).value(schema, "$", "")


def invalidate(value: Any, schema: dict[str, Any], key: str, *, tool: bool) -> tuple[Any, str | None]:
    """Spoil a generated answer (chosen by hash of ``key``): one field of the
    wrong type, a missing required field, or (text answers only) prose before
    the JSON. Returns (value, prose prefix or None)."""
    modes = ("wrong_type", "missing_required") if tool else ("wrong_type", "missing_required", "prose")
    mode = modes[digest(key) % len(modes)]
    top = resolve(schema, schema)
    if "allOf" in top:
        top = _merge(top, schema)
    if mode == "prose":
        return value, PROSE
    if not isinstance(value, dict):
        return {"unexpected": True}, None  # a non-object schema: an object is the wrong type
    spoiled = dict(value)
    required = [r for r in top.get("required", []) if r in spoiled]
    if mode == "missing_required" and required:
        del spoiled[required[digest(key) % len(required)]]
        return spoiled, None
    if not spoiled:  # nothing to spoil: a property that is not allowed
        spoiled["unexpected"] = True
        return spoiled, None
    names = list(spoiled)
    name = names[digest(key + "f") % len(names)]
    spoiled[name] = "not a valid value" if not isinstance(spoiled[name], str) else 12345
    return spoiled, None
