"""structured.py: schemas, the request parameters, the validator, flattening (plain data)."""

from __future__ import annotations

import pytest

from llmjobs.exceptions import JobInputError
from llmjobs.prompts import build_params
from llmjobs.structured import (
    TOOL_NAME,
    check_schema,
    flatten,
    make_validator,
    output_params,
    schema_columns,
    schema_from_fields,
    supports_output_format,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "product": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment"],
}


def test_check_schema_accepts_objects_and_json_text():
    assert check_schema(SCHEMA) == SCHEMA
    assert check_schema('{"type": "object", "properties": {}}') == {"type": "object", "properties": {}}
    assert check_schema(None) is None and check_schema("") is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("{not json", "the schema is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"type": "string"}, "an object at the top level"),
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "not a valid JSON Schema at properties/a/type"),
    ],
)
def test_check_schema_errors_are_one_line(schema, message):
    with pytest.raises(JobInputError, match=message) as info:
        check_schema(schema)
    assert "\n" not in str(info.value)


def test_schema_from_fields_writes_the_schema():
    schema = schema_from_fields(
        [
            {"name": "sentiment", "type": "string", "enum": "positive, negative", "required": True},
            {"name": "score", "type": "integer", "required": False},
            {"name": "", "type": "string"},  # blank rows are skipped
        ]
    )
    assert schema == {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}, "score": {"type": "integer"}},
        "required": ["sentiment"],
        "additionalProperties": False,
    }
    assert schema_from_fields([]) is None
    with pytest.raises(JobInputError, match="listed twice"):
        schema_from_fields([{"name": "a"}, {"name": "a"}])
    with pytest.raises(JobInputError, match="enum values need the type string"):
        schema_from_fields([{"name": "a", "type": "integer", "enum": "1,2"}])


def test_output_params_use_output_config_or_a_strict_forced_tool():
    params = output_params("claude-haiku-4-5", SCHEMA)
    fmt = params["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["additionalProperties"] is False  # objects are closed, as the API asks
    assert fmt["schema"]["properties"]["product"]["additionalProperties"] is False
    assert "additionalProperties" not in SCHEMA  # the job's schema is not changed
    old = output_params("claude-3-5-haiku-20241022", SCHEMA)
    assert old["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert old["tools"][0]["strict"] is True and old["tools"][0]["input_schema"]["type"] == "object"
    assert supports_output_format("claude-opus-4-7") and not supports_output_format("claude-sonnet-4-20250514")


def test_build_params_adds_the_schema_of_a_job():
    class Job:
        model = "claude-sonnet-4-5"
        max_tokens = 100
        prompt_template = "Classify: {text}"
        system_prompt = ""
        stop_sequences: list[str] = []
        output_schema = SCHEMA

    params = build_params(Job(), {"text": "hi"})
    assert params["output_config"]["format"]["schema"]["required"] == ["sentiment"]
    Job.output_schema = None  # type: ignore[assignment]
    assert "output_config" not in build_params(Job(), {"text": "hi"})


def test_validator_says_why_in_one_line():
    validate = make_validator(SCHEMA)
    assert validate('{"sentiment": "positive", "tags": ["a"]}', "end_turn") is None
    assert "not JSON" in (validate("Sure! Here is the JSON:", "end_turn") or "")
    assert (
        validate('{"sentiment": "great"}', "end_turn")
        == "at sentiment: 'great' is not one of ['positive', 'negative', 'neutral']"
    )
    assert "'sentiment' is a required property" in (validate("{}", "end_turn") or "")
    assert "max_tokens" in (validate('{"sentiment": "positive"}', "max_tokens") or "")


def test_columns_and_flatten():
    assert schema_columns(SCHEMA) == ["sentiment", "product.name", "product.price", "tags"]
    assert flatten({"sentiment": "neutral", "product": {"name": "X", "price": 2.5}, "tags": ["a", "b"]}) == {
        "sentiment": "neutral",
        "product.name": "X",
        "product.price": 2.5,
        "tags": '["a", "b"]',
    }
    assert flatten("not an object") == {}
