"""Deterministic, schema-valid JSON answers for structured output and tool use,
following the prompt where they can:

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

import math
import re
from collections.abc import Callable
from typing import Any

from .answers import classify
from .extraction import find_for
from .generic import digest
from .respond import ApiError
from .schema import resolve

__all__ = ["PROSE", "generate", "invalidate"]

#: beyond these many values or this deep a "$.a.b[0].c" path, values are null (only a
#: recursive non-strict tool schema gets there: strict ones may not recurse)
_MAX_NODES = 2000
_MAX_PATH = 200

#: What an ``invalid_output`` answer in prose puts before the JSON.
PROSE = "Sure! Here is the JSON you asked for:\n\n"
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][\w'-]*")
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?![\w.-])")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_CAPS = re.compile(r"\b[A-Z][\w-]*[a-z][\w-]*(?:[ \t]+(?:[A-Z][\w-]*|\d+\b))*")
#: fields named so get the document's proper names ("SuperBlender 3000")
_NAMED = (
    "product", "brand", "item", "model", "subject", "topic", "title", "vendor", "service", "name", "person",
    "customer", "author", "company", "organization", "city", "location", "place", "entit", "who",
)  # fmt: skip


class _Gen:
    def __init__(self, root: dict[str, Any], system: str, user: str) -> None:
        self.root = root
        self.document = user or system
        self.prompt = f"{system}\n{user}" if system else user
        self.sentences = [s.strip() for s in _SENTENCES.split(self.document) if _WORD.search(s)]
        self.numbers = _NUMBER.findall(_DATE.sub(" ", self.document))
        self.names = _proper(self.document)
        self.nodes = 0

    def value(self, schema: Any, path: str, name: str, index: int = 0) -> Any:
        self.nodes += 1
        if not isinstance(schema, dict) or self.nodes > _MAX_NODES or len(path) > _MAX_PATH:
            return None  # a recursive non-strict tool schema: stop
        try:
            return self._value(schema, path, name, index)
        except ApiError:  # a non-strict tool's $ref is not checked: a bad one gets null
            return None

    def _value(self, schema: dict[str, Any], path: str, name: str, index: int) -> Any:
        schema = resolve(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.enum(schema["enum"], path)
        for key in ("anyOf", "oneOf"):  # oneOf: non-strict tools only
            if key in schema:
                variants = [v for v in schema[key] if isinstance(v, dict)]
                if not variants:
                    return None
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
        limits = _limits(schema)
        if "minItems" in limits:
            count = max(count, int(limits["minItems"]))
        if "maxItems" in limits:
            count = max(0, min(count, int(limits["maxItems"])))
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
        found = self.names if self.names and any(w in name.lower() for w in _NAMED) else None
        if not found and name:
            found = find_for(name, self.document)
        text = found[index % len(found)] if found else self.phrase(h, name)
        limits = _limits(schema)
        if "minLength" in limits:
            while len(text) < limits["minLength"]:
                text = f"{text} {text}" if text else "n/a"
        return text[: int(limits["maxLength"])] if "maxLength" in limits else text

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
        limits = _limits(schema)
        step = 1.0 if integer else 0.5
        low = limits.get("minimum", limits.get("exclusiveMinimum", -float("inf")) + step)
        high = limits.get("maximum", limits.get("exclusiveMaximum", float("inf")) - step)
        if low <= high and not low <= value <= high:
            if high == float("inf"):
                value = low
            elif integer:
                value = float(math.ceil(low) + h % int(min(math.floor(high) - math.ceil(low), 100) + 1))
            else:
                value = low + (h % 1001) / 1000 * (high - low)
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


_LIMITS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
)
_HINTS = re.compile(r"\{([^{}]*)\}\s*$")


def _limits(schema: dict[str, Any]) -> dict[str, float]:
    """Numeric constraints, from the schema (non-strict tools) or, as a model would
    read them, from the ``{minimum: 0, maximum: 1}`` the SDK's ``transform_schema``
    appends to the description of constraints the API does not take."""
    found = {k: float(v) for k in _LIMITS if isinstance(v := schema.get(k), int | float) and not isinstance(v, bool)}
    description = schema.get("description")
    match = _HINTS.search(description) if isinstance(description, str) else None
    if match:
        for pair in match.group(1).split(","):
            key, _, value = pair.partition(":")
            if key.strip() in _LIMITS:
                try:
                    found.setdefault(key.strip(), float(value))
                except ValueError:
                    pass
    return found


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
