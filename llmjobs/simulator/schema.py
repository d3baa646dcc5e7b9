"""JSON Schemas of structured outputs: the subset the API accepts, checked as it
does (a 400 invalid_request_error naming the offending path), and ``$ref``
resolution shared with :mod:`.structured`.

Accepted, as in Anthropic's structured-outputs docs: ``type`` (object, array,
string, integer, number, boolean, null, or a list of them), ``enum``, ``const``,
``anyOf``, ``allOf``, ``$ref`` to local ``$defs``/``definitions`` (not
recursive), ``properties``, ``required``, ``additionalProperties: false`` (set
explicitly on every object, as the SDK's schema transform does),
``items``, ``minItems`` 0 or 1, the string ``format``\\s below, ``title``,
``description``, ``default``, ``examples``. Rejected: numeric and length
constraints, ``pattern``, other array constraints, ``additionalProperties`` other
than false, unknown formats and keywords.
"""

from __future__ import annotations

from typing import Any

from .respond import ApiError

__all__ = ["STRING_FORMATS", "TYPES", "check_schema", "check_structure", "resolve"]

TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid", "text"}
)
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems"}),
    "string": frozenset({"format"}),
}
_GENERAL = frozenset({"type", "enum", "const", "anyOf", "allOf", "$ref", "$defs", "definitions"})
_MAX_DEPTH = 32


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def resolve(schema: dict[str, Any], root: dict[str, Any], where: str = "schema") -> dict[str, Any]:
    """``schema`` with its ``$ref`` (``#/$defs/X`` or ``#/definitions/X``) followed."""
    seen = 0
    while "$ref" in schema:
        ref = schema["$ref"]
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise _bad(f"{where}.$ref: {ref!r}: only local references to #/$defs/NAME are supported")
        target = root.get(parts[1], {}).get(parts[2]) if isinstance(root.get(parts[1]), dict) else None
        if not isinstance(target, dict):
            raise _bad(f"{where}.$ref: {ref!r}: no such definition")
        schema = target
        seen += 1
        if seen > _MAX_DEPTH:
            raise _bad(f"{where}.$ref: {ref!r}: recursive schemas are not supported")
    return schema


def check_schema(schema: Any, where: str, *, root_object: bool = False) -> None:
    """Raise a 400 ApiError if ``schema`` is not a structured-output schema the
    API accepts; ``root_object``: the top level must be ``type: object`` (tools)."""
    if not isinstance(schema, dict):
        raise _bad(f"{where}: Input should be a valid dictionary")
    if root_object and schema.get("type") != "object":
        raise _bad(f"{where}.type: Input should be 'object'")
    for name in ("$defs", "definitions"):
        defs = schema.get(name)
        if defs is not None and not isinstance(defs, dict):
            raise _bad(f"{where}.{name}: Input should be a valid dictionary")
    _check(schema, schema, where, [])


def _check(schema: Any, root: dict[str, Any], where: str, refs: list[str]) -> None:
    if len(refs) > _MAX_DEPTH or where.count(".") > 4 * _MAX_DEPTH:
        raise _bad(f"{where}: schema is nested too deeply")
    if not isinstance(schema, dict):
        raise _bad(f"{where}: a schema must be a JSON object")
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in refs:
            raise _bad(f"{where}.$ref: recursive schemas are not supported ({ref})")
        _check(resolve(schema, root, where), root, f"{where}.$ref", [*refs, str(ref)])
    if isinstance(schema.get("$defs"), dict) and schema is root:
        for name, sub in schema["$defs"].items():
            _check(sub, root, f"{where}.$defs.{name}", refs)
    types = _types(schema, where)
    allowed = _GENERAL | _ANNOTATIONS
    for kind in types:
        allowed |= _BY_TYPE.get(kind, frozenset())
    for key in schema:
        if key not in allowed:
            kinds = "/".join(sorted(types)) or "untyped"
            raise _bad(
                f"{where}: keyword {key!r} is not supported for {kinds} schemas in structured outputs "
                "(supported: type, enum, const, anyOf, allOf, $ref, properties, required, "
                "additionalProperties: false, items, minItems 0 or 1, format, description)"
            )
    if "enum" in schema:
        enum = schema["enum"]
        if not isinstance(enum, list) or not enum:
            raise _bad(f"{where}.enum: must be a non-empty list")
        if not all(v is None or isinstance(v, str | int | float | bool) for v in enum):
            raise _bad(f"{where}.enum: values must be strings, numbers, booleans or null")
    for key in ("anyOf", "allOf"):
        if key in schema:
            variants = schema[key]
            if not isinstance(variants, list) or not variants:
                raise _bad(f"{where}.{key}: must be a non-empty list of schemas")
            for i, sub in enumerate(variants):
                _check(sub, root, f"{where}.{key}.{i}", refs)
    if not types and not ({"enum", "const", "anyOf", "allOf", "$ref"} & schema.keys()):
        raise _bad(f"{where}: a schema needs a 'type', 'enum', 'const', 'anyOf', 'allOf' or '$ref'")
    if "object" in types:
        _check_object(schema, root, where, refs)
    if "array" in types:
        if "items" in schema:
            _check(schema["items"], root, f"{where}.items", refs)
        min_items = schema.get("minItems", 0)
        if min_items not in (0, 1) or isinstance(min_items, bool):
            raise _bad(f"{where}.minItems: only 0 or 1 is supported in structured outputs")
    if "string" in types and "format" in schema and schema["format"] not in STRING_FORMATS:
        raise _bad(
            f"{where}.format: {schema['format']!r} is not a supported string format "
            f"(supported: {', '.join(sorted(STRING_FORMATS))})"
        )


def check_structure(schema: Any, where: str, depth: int = 0) -> None:
    """The looser check of a non-strict tool's ``input_schema``: any JSON Schema
    keyword may appear, but those that hold schemas or lists must be well formed
    (as the JSON Schema meta-schema requires)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _bad(f"{where}: a schema must be a JSON object")
    if depth > _MAX_DEPTH:
        raise _bad(f"{where}: schema is nested too deeply")
    for key in ("properties", "$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                raise _bad(f"{where}.{key}: Input should be a valid dictionary")
            for name, sub in schema[key].items():
                check_structure(sub, f"{where}.{key}.{name}", depth + 1)
    for key in ("anyOf", "allOf", "oneOf", "enum"):
        if key in schema and (not isinstance(schema[key], list) or not schema[key]):
            raise _bad(f"{where}.{key}: must be a non-empty list")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            check_structure(sub, f"{where}.{key}.{i}", depth + 1)
    for key in ("items", "additionalProperties", "not"):
        if key in schema:
            check_structure(schema[key], f"{where}.{key}", depth + 1)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _bad(f"{where}.required: Input should be a valid list of strings")
    if "type" in schema:
        _types(schema, where)


def _types(schema: dict[str, Any], where: str) -> list[str]:
    kind = schema.get("type")
    if kind is None:
        return []
    kinds = kind if isinstance(kind, list) else [kind]
    for k in kinds:
        if k not in TYPES:
            raise _bad(f"{where}.type: {k!r} is not a JSON Schema type (one of: {', '.join(sorted(TYPES))})")
    return [str(k) for k in kinds]


def _check_object(schema: dict[str, Any], root: dict[str, Any], where: str, refs: list[str]) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise _bad(f"{where}.properties: Input should be a valid dictionary")
    for name, sub in properties.items():
        _check(sub, root, f"{where}.properties.{name}", refs)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _bad(f"{where}.required: Input should be a valid list of strings")
    for name in required:
        if name not in properties:
            raise _bad(f"{where}.required: {name!r} is required but not defined in properties")
    if "additionalProperties" not in schema:
        raise _bad(f"{where}: an object schema must set additionalProperties to false in structured outputs")
    if schema["additionalProperties"] is not False:
        raise _bad(f"{where}.additionalProperties: only false is supported in structured outputs")
