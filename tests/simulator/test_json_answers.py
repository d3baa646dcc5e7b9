"""Unit tests of the structured answers (no server): every schema shape the API
accepts gets a valid, deterministic value; invalidate() always breaks it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llmjobs.simulator.json_answers import PROSE, generate, invalidate
from llmjobs.simulator.respond import ApiError
from llmjobs.simulator.schema import check_schema

DOC = (
    "Order 1234 from Acme Corp was placed by Maria Lopez (maria@acme.io) on 2026-02-14 for $120.50. "
    "She says the delivery was late and the box was damaged. Please call +1 555 010 2000."
)


def obj(properties: dict, required: list | None = None, **extra) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


SCHEMAS = {
    "scalars": obj(
        {
            "customer_name": {"type": "string"},
            "company": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "order_date": {"type": "string", "format": "date"},
            "created": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "site": {"type": "string", "format": "uri"},
            "quantity": {"type": "integer"},
            "total": {"type": "number"},
            "damaged": {"type": "boolean"},
            "refunded": {"type": "boolean"},
            "nothing": {"type": "null"},
        }
    ),
    "type lists, const, enums": obj(
        {
            "maybe": {"type": ["string", "null"]},
            "version": {"const": 2},
            "priority": {"enum": [1, 2, 3]},
            "status": {"type": "string", "enum": ["late", "on_time"]},
            "flag": {"enum": ["yes", None]},
        }
    ),
    "nested": obj(
        {
            "items": {"type": "array", "items": obj({"sku": {"type": "string"}, "qty": {"type": "integer"}})},
            "address": obj({"city": {"type": "string"}, "zip": {"type": ["string", "null"]}}, required=["city"]),
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "minItems": 1},
        }
    ),
    "anyOf, allOf, $ref": {
        **obj(
            {
                "contact": {"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]},
                "extra": {"allOf": [{"type": "string"}, {"enum": ["x", "y"]}]},
                "both": {"allOf": [{"$ref": "#/$defs/person"}]},
                "legacy": {"$ref": "#/definitions/tag"},
            }
        ),
        "$defs": {"person": obj({"name": {"type": "string"}, "phone": {"type": "string"}})},
        "definitions": {"tag": {"type": "string", "enum": ["a", "b"]}},
    },
    "not an object": {"type": "array", "items": {"type": "string"}},
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_generated_values_are_valid_and_deterministic(name):
    schema = SCHEMAS[name]
    check_schema(schema, "schema")  # the API would accept it
    value = generate(schema, "Extract the order.", DOC)
    jsonschema.validate(value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert generate(schema, "Extract the order.", DOC) == value


def test_values_follow_the_document():
    value = generate(SCHEMAS["scalars"], "", DOC)
    assert value["email"] == "maria@acme.io" and value["order_date"] == "2026-02-14"
    assert value["customer_name"] == "Acme Corp" or value["customer_name"] == "Maria Lopez"
    assert value["quantity"] == 1234 or value["quantity"] in (120, 1, 555, 10, 2000)
    assert value["damaged"] is True and value["refunded"] is False  # the word appears, or not
    status = generate(SCHEMAS["type lists, const, enums"], "", DOC)["status"]
    assert status == "late"  # the enum value the document names


@pytest.mark.parametrize("name", [n for n in SCHEMAS if n != "not an object"])
@pytest.mark.parametrize("key", ["k1", "k2", "k3", "k4", "k5", "k6"])
def test_invalidate_always_breaks_the_answer(name, key):
    schema = SCHEMAS[name]
    value = generate(schema, "", DOC)
    for tool in (False, True):
        spoiled, prose = invalidate(value, schema, key, tool=tool)
        if prose is not None:
            assert not tool and prose == PROSE
            text = prose + json.dumps(spoiled)
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
        else:
            assert not jsonschema.Draft202012Validator(schema).is_valid(spoiled)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {}},  # additionalProperties missing
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {"type": "array", "maxItems": 2}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {"$ref": "https://x/y"}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {"enum": []}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {"anyOf": []}}, "additionalProperties": False},
        {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
    ],
)
def test_schemas_the_api_refuses(schema):
    with pytest.raises(ApiError) as error:
        check_schema(schema, "output_config.format.schema")
    assert error.value.status == 400 and error.value.message.startswith("output_config.format.schema")


def test_non_strict_tool_schemas_that_strict_mode_refuses_still_get_an_answer():
    tree = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "$defs": {"node": {"$ref": "#"}},
    }
    tree["$defs"]["node"] = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
    }
    value = generate(tree, "", DOC)  # recursive: cut off, no RecursionError
    assert isinstance(value, dict) and "label" in value
    broken = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/missing"}, "b": {"type": "integer", "minimum": 5}},
    }
    assert generate(broken, "", DOC)["a"] is None and generate(broken, "", DOC)["b"] >= 5
    odd = {"type": "object", "properties": {"c": {"oneOf": [True, {"type": "integer"}]}, "d": {"anyOf": [False]}}}
    assert generate(odd, "", DOC) == {"c": 1234, "d": None} or isinstance(generate(odd, "", DOC)["c"], int)
