"""Structured extraction: a job's output JSON Schema, on plain data (no Django, no model).

- ``check_schema``: is this a usable output schema (a JSON Schema whose top level is an
  object)? One-line ``JobInputError`` otherwise.
- ``schema_from_fields``: the web form's field list (name, type, enum, required) -> a schema.
- ``output_params``: the Messages API parameters that ask for it: ``output_config.format``
  (``{"type": "json_schema", "schema": ...}``) on models that have structured outputs, one
  strict forced tool on older models (``WITHOUT_OUTPUT_FORMAT`` is the capability table).
- ``make_validator``: answer text -> ``None`` when it is JSON valid against the schema,
  else the first error, one line (the engine's ``Call.validate`` hook).
- ``schema_columns`` / ``flatten``: one CSV column per output field, nested fields with dots.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .exceptions import JobInputError

__all__ = [
    "FIELD_TYPES",
    "TOOL_NAME",
    "WITHOUT_OUTPUT_FORMAT",
    "check_schema",
    "flatten",
    "make_validator",
    "output_params",
    "parse_output",
    "schema_columns",
    "schema_from_fields",
    "supports_output_format",
]

# The capability table: models that do NOT take ``output_config.format`` (structured
# outputs came with Sonnet 4.5 / Opus 4.1 and every later model). A model id is in it
# when it starts with one of these; such models get the schema as one strict tool they
# are forced to call instead.
WITHOUT_OUTPUT_FORMAT: tuple[str, ...] = (
    "claude-3",
    "claude-2",
    "claude-instant",
    "claude-sonnet-4-0",
    "claude-sonnet-4-2025",
    "claude-opus-4-0",
    "claude-opus-4-2025",
)
TOOL_NAME = "record_output"
FIELD_TYPES = ("string", "number", "integer", "boolean", "array", "object")
MAX_SCHEMA_CHARS = 50_000


def supports_output_format(model: str) -> bool:
    """Does ``model`` take ``output_config.format``? (See ``WITHOUT_OUTPUT_FORMAT``.)"""
    return not any(model.startswith(prefix) for prefix in WITHOUT_OUTPUT_FORMAT) and model not in (
        "claude-sonnet-4",
        "claude-opus-4",
    )


def check_schema(schema: Any) -> dict[str, Any] | None:
    """``schema`` as a dict (a JSON string is parsed), or ``None`` for no schema.

    Raises ``JobInputError`` unless it is a valid JSON Schema (draft 2020-12) with
    ``"type": "object"`` at the top level.
    """
    if schema is None or schema == "" or schema == {}:
        return None
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_CHARS:
            raise JobInputError(f"the schema is over {MAX_SCHEMA_CHARS} characters")
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise JobInputError(f"the schema is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise JobInputError("the schema must be a JSON object")
    if schema.get("type") != "object":
        raise JobInputError('the schema must describe an object at the top level ("type": "object")')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise JobInputError(
            f"the schema is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
        ) from None
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise JobInputError(f"the schema is over {MAX_SCHEMA_CHARS} characters")
    return schema


def schema_from_fields(fields: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A schema from a field list: ``[{"name", "type", "enum": [...], "required": bool,
    "description"}]``. ``None`` when the list is empty. Raises ``JobInputError``."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for number, spec in enumerate(fields, 1):
        name = str(spec.get("name") or "").strip()
        if not name:
            continue
        if name in properties:
            raise JobInputError(f"field {number}: {name!r} is listed twice")
        kind = str(spec.get("type") or "string")
        if kind not in FIELD_TYPES:
            raise JobInputError(f"field {name!r}: unknown type {kind!r} (use one of {', '.join(FIELD_TYPES)})")
        prop: dict[str, Any] = {"type": kind}
        enum = spec.get("enum")
        if isinstance(enum, str):
            enum = [v.strip() for v in enum.split(",") if v.strip()]
        if enum:
            if kind != "string":
                raise JobInputError(f"field {name!r}: enum values need the type string")
            prop["enum"] = list(enum)
        if kind == "array":
            prop["items"] = {"type": "string"}
        if spec.get("description"):
            prop["description"] = str(spec["description"])
        properties[name] = prop
        if spec.get("required", True):
            required.append(name)
    if not properties:
        return None
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _closed(schema: Any) -> Any:
    """A copy where every object schema without ``additionalProperties`` gets ``false``
    (what structured outputs and strict tools ask for)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if out.get("type") == "object" and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def output_params(model: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The request parameters asking ``model`` for JSON matching ``schema``."""
    closed = _closed(copy.deepcopy(dict(schema)))
    if supports_output_format(model):
        return {"output_config": {"format": {"type": "json_schema", "schema": closed}}}
    return {
        "tools": [
            {
                "name": TOOL_NAME,
                "description": "Record the answer. Call this exactly once with every field.",
                "input_schema": closed,
                "strict": True,
            }
        ],
        "tool_choice": {"type": "tool", "name": TOOL_NAME},
    }


def parse_output(text: str | None) -> Any:
    """The answer's JSON value, or ``None`` when it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def make_validator(schema: Mapping[str, Any]) -> Callable[[str | None, str | None], str | None]:
    """``validate(text, stop_reason)`` -> ``None`` if ``text`` is JSON valid against ``schema``,
    else one line saying why (a cut answer, not JSON, or the first schema error)."""
    validator = Draft202012Validator(dict(schema))

    def validate(text: str | None, stop_reason: str | None = None) -> str | None:
        if stop_reason == "max_tokens":
            return "the answer was cut off at max_tokens before the JSON was complete"
        try:
            value = json.loads(text or "")
        except ValueError as exc:
            return f"the answer is not JSON ({exc})"
        error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{'at ' + where + ': ' if where else ''}{error.message}"

    return validate


def schema_columns(schema: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """Output columns of ``schema`` in its property order; nested objects flattened with dots."""
    if not schema:
        return []
    columns: list[str] = []
    for name, prop in (schema.get("properties") or {}).items():
        key = f"{prefix}{name}"
        if isinstance(prop, dict) and prop.get("type") == "object" and prop.get("properties"):
            columns.extend(schema_columns(prop, key + "."))
        else:
            columns.append(key)
    return columns


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON text)."""
    out: dict[str, Any] = {}
    if not isinstance(value, dict):
        return out
    for key, inner in value.items():
        name = f"{prefix}{key}"
        if isinstance(inner, dict):
            out.update(flatten(inner, name + "."))
        elif isinstance(inner, list):
            out[name] = json.dumps(inner, ensure_ascii=False)
        else:
            out[name] = inner
    return out
