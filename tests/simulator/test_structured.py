"""Structured output (output_config.format) and tool use through the real SDK over TCP."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import pydantic
import pytest

from .conftest import HEADERS, MODEL, aclient, parse_sse, raw_post, user

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "product": {"type": "string"},
        "reason": {"type": "string"},
        "customer_email": {"type": "string", "format": "email"},
        "rating": {"type": "integer"},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "meta": {
            "type": "object",
            "properties": {
                "order_date": {"type": "string", "format": "date"},
                "amount": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                "channel": {"$ref": "#/$defs/channel"},
            },
            "required": ["order_date", "channel"],
            "additionalProperties": False,
        },
    },
    "required": ["sentiment", "product", "reason", "meta"],
    "additionalProperties": False,
    "$defs": {"channel": {"type": "string", "enum": ["email", "phone", "chat"]}},
}
BAD_TICKET = (
    "Ticket from jane@example.com: The SuperBlender 3000 arrived broken on 2026-03-02. "
    "I want a refund of 49.99 now, this is urgent! Sent by email."
)
GOOD_TICKET = "Love the QuietFan Pro, it is great and works perfectly. Thanks! (chat)"
FORMAT = {"format": {"type": "json_schema", "schema": SCHEMA}}
TOOL = {"name": "record_ticket", "description": "Record a support ticket", "input_schema": SCHEMA}


def valid(value: object, schema: dict = SCHEMA) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def tokens(text: str) -> int:
    return (len(text) + 3) // 4


@pytest.mark.asyncio
async def test_output_config_plain_follows_prompt_and_validates(sim):
    async with aclient(sim) as client:
        bad = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        again = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        good = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(GOOD_TICKET), output_config=FORMAT
        )
    assert bad.content[0].type == "text" and bad.stop_reason == "end_turn"
    value = json.loads(bad.content[0].text)
    assert valid(value), value
    assert bad.content[0].text == again.content[0].text  # deterministic
    assert value["sentiment"] == "negative" and json.loads(good.content[0].text)["sentiment"] == "positive"
    assert value["customer_email"] == "jane@example.com"
    assert value["meta"]["order_date"] == "2026-03-02" and value["meta"]["channel"] == "email"
    assert value["product"] == "SuperBlender 3000" and value["urgent"] is True
    assert 1 <= len(value["tags"]) <= 3 and set(value) == set(SCHEMA["properties"])
    assert json.loads(good.content[0].text)["meta"]["channel"] == "chat"
    assert bad.usage.output_tokens == tokens(bad.content[0].text)
    assert sim.stats()["structured"] == {"answers": 3, "tool_use": 0, "invalid": 0}


@pytest.mark.asyncio
async def test_output_config_stream_matches_plain(sim):
    async with aclient(sim) as client:
        plain = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == plain.content[0].text == final.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert sim.stats()["output_tokens"] == 2 * plain.usage.output_tokens


@pytest.mark.asyncio
async def test_sdk_parse_with_pydantic_model(sim):
    class Ticket(pydantic.BaseModel):
        sentiment: str
        product: str
        rating: int
        refund: bool

    async with aclient(sim) as client:
        parsed = await client.messages.parse(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_format=Ticket
        )
    ticket = parsed.parsed_output
    assert isinstance(ticket, Ticket) and ticket.refund is True and ticket.product == "SuperBlender 3000"


@pytest.mark.asyncio
async def test_forced_tool_plain_and_stream(sim):
    choice = {"type": "tool", "name": "record_ticket"}
    other = {"name": "other_tool", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}
    async with aclient(sim) as client:
        plain = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), tools=[other, TOOL], tool_choice=choice
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), tools=[other, TOOL], tool_choice=choice
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    block = plain.content[0]
    assert plain.stop_reason == "tool_use" and block.type == "tool_use" and block.name == "record_ticket"
    assert block.id.startswith("toolu_") and valid(block.input) and block.input["sentiment"] == "negative"
    assert final.stop_reason == "tool_use" and final.content[0].input == block.input
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert len(deltas) > 1 and all(e.delta.type == "input_json_delta" for e in deltas)
    assert json.loads("".join(e.delta.partial_json for e in deltas)) == block.input
    assert (
        plain.usage.output_tokens == final.usage.output_tokens == tokens(json.dumps(block.input, separators=(",", ":")))
    )
    assert sim.stats()["structured"]["tool_use"] == 2


@pytest.mark.asyncio
async def test_tool_choice_any_auto_none(sim):
    weather = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    ask = user("What is the weather in Paris today?")
    async with aclient(sim) as client:
        anyone = await client.messages.create(
            model=MODEL, max_tokens=256, messages=user(BAD_TICKET), tools=[weather, TOOL], tool_choice={"type": "any"}
        )
        named = await client.messages.create(
            model=MODEL,
            max_tokens=256,
            messages=user("Please record_ticket this: " + BAD_TICKET),
            tools=[weather, TOOL],
        )
        auto = await client.messages.create(model=MODEL, max_tokens=256, messages=ask, tools=[TOOL])
        auto_weather = await client.messages.create(
            model=MODEL, max_tokens=256, messages=user("get weather for Paris"), tools=[weather]
        )
        none = await client.messages.create(
            model=MODEL, max_tokens=256, messages=user("record_ticket"), tools=[TOOL], tool_choice={"type": "none"}
        )
    assert anyone.content[0].type == "tool_use" and anyone.content[0].name == "get_weather"  # none named: the first
    assert named.content[0].name == "record_ticket" and valid(named.content[0].input)
    assert auto.content[0].type == "text" and auto.stop_reason == "end_turn"
    assert auto_weather.content[0].type == "tool_use" and auto_weather.content[0].input["city"] == "Paris"
    assert none.content[0].type == "text"


@pytest.mark.asyncio
async def test_structured_in_batches(sim):
    def req(custom_id: str, text: str, **params) -> dict:
        return {
            "custom_id": custom_id,
            "params": {"model": MODEL, "max_tokens": 1024, "messages": user(text), **params},
        }

    async with aclient(sim) as client:
        batch = await client.messages.batches.create(
            requests=[
                req("fmt", BAD_TICKET, output_config=FORMAT),
                req("tool", GOOD_TICKET, tools=[TOOL], tool_choice={"type": "tool", "name": "record_ticket"}),
                req("bad", "x", output_config={"format": {"type": "json_schema", "schema": {"type": "nope"}}}),
            ]
        )
        results = {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}
        direct = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
    assert valid(json.loads(results["fmt"].message.content[0].text))
    assert results["fmt"].message.content[0].text == direct.content[0].text
    tool = results["tool"].message
    assert (
        tool.stop_reason == "tool_use"
        and valid(tool.content[0].input)
        and tool.content[0].input["sentiment"] == "positive"
    )
    assert results["bad"].type == "errored" and "type" in results["bad"].error.error.message


def _invalid(text: str) -> bool:
    try:
        return not valid(json.loads(text))
    except json.JSONDecodeError:
        return True


@pytest.mark.asyncio
async def test_invalid_output_fault(sim):
    async with aclient(sim) as client:
        sim.inject("invalid_output")
        injected = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        header = await client.messages.create(
            model=MODEL,
            max_tokens=1024,
            messages=user(BAD_TICKET),
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "record_ticket"},
            extra_headers={"x-sim-fault": "invalid_output"},
        )
        clean = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        sim.configure(invalid_output=1.0)
        texts = []
        for i in range(12):
            answer = await client.messages.create(
                model=MODEL, max_tokens=1024, messages=user(f"{BAD_TICKET} #{i}"), output_config=FORMAT
            )
            texts.append(answer.content[0].text)
            assert answer.usage.output_tokens == tokens(answer.content[0].text)
        plain = await client.messages.create(model=MODEL, max_tokens=64, messages=user("Classify as one of: a, b. a"))
        batch = await client.messages.batches.create(
            requests=[
                {
                    "custom_id": "x",
                    "params": {
                        "model": MODEL,
                        "max_tokens": 1024,
                        "messages": user(BAD_TICKET),
                        "output_config": FORMAT,
                    },
                }
            ]
        )
        batched = [r.result async for r in await client.messages.batches.results(batch.id)]
    assert _invalid(injected.content[0].text) and not _invalid(clean.content[0].text)
    assert header.content[0].type == "tool_use" and not valid(header.content[0].input)
    assert all(_invalid(t) for t in texts)
    assert any(t.startswith("Sure! Here is") for t in texts)  # prose before the JSON
    spoiled = [json.loads(t) for t in texts if t.startswith("{")]
    assert any(not set(SCHEMA["required"]) <= set(v) for v in spoiled)  # a required field missing
    assert any(set(SCHEMA["required"]) <= set(v) for v in spoiled)  # a field of the wrong type
    assert plain.content[0].text == "a"  # not structured: unaffected
    assert _invalid(batched[0].message.content[0].text)
    assert sim.stats()["structured"]["invalid"] == 2 + 12 + 1


@pytest.mark.asyncio
async def test_truncated_structured_answer(sim):
    async with aclient(sim) as client:
        cut = await client.messages.create(model=MODEL, max_tokens=8, messages=user(BAD_TICKET), output_config=FORMAT)
        tool = await client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=user(BAD_TICKET),
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "record_ticket"},
        )
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 8 and _invalid(cut.content[0].text)
    assert tool.stop_reason == "max_tokens" and tool.content[0].type == "tool_use" and tool.content[0].input == {}


def _error(sim, payload: dict) -> str:
    status, _, body = raw_post(sim.base_url, "/v1/messages", payload, HEADERS)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    return error["message"]


def _fmt(schema: object) -> dict:
    return {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"output_config": _fmt({"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}})},
            "'minimum'",
        ),
        ({"output_config": _fmt({"type": "object", "additionalProperties": True})}, "additionalProperties"),
        (
            {"output_config": _fmt({"type": "object", "properties": {"a": {"type": "string"}}})},
            "must set additionalProperties to false",
        ),
        ({"output_config": _fmt({"type": "thing"})}, "'thing' is not a JSON Schema type"),
        ({"output_config": _fmt({"type": "object", "required": ["a"]})}, "'a' is required but not defined"),
        ({"output_config": _fmt({"type": "string", "format": "color"})}, "'color' is not a supported string format"),
        ({"output_config": _fmt({"type": "array", "items": {"type": "string"}, "minItems": 3})}, "minItems"),
        (
            {
                "output_config": _fmt(
                    {
                        "$ref": "#/$defs/n",
                        "$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}},
                    }
                )
            },
            "recursive",
        ),
        ({"output_config": _fmt("not a schema")}, "valid dictionary"),
        ({"output_config": {"format": {"type": "json_object"}}}, "json_schema"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "schema: Field required"),
        ({"tools": [{"name": "t"}]}, "input_schema: Field required"),
        ({"tools": [{**TOOL, "parameters": {}}]}, "tools.0.parameters: Extra inputs are not permitted"),
        ({"output_config": {"format": {"type": "json_schema", "schema": SCHEMA, "name": "x"}}}, "format.name: Extra"),
        ({"output_config": {"response_format": {}}}, "output_config.response_format: Extra"),
        ({"tools": [TOOL], "tool_choice": {"type": "auto", "name": "record_ticket"}}, "tool_choice.name: Extra"),
        ({"tools": [{"name": "t", "input_schema": {"type": "string"}}]}, "Input should be 'object'"),
        ({"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}, "pattern"),
        ({"tools": [TOOL, TOOL]}, "unique"),
        (
            {"tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"a": {"enum": []}}}}]},
            "tools.0.input_schema.properties.a.enum: must be a non-empty list",
        ),
        (
            {"tools": [{"name": "t", "input_schema": {"type": "object", "properties": []}}]},
            "properties: Input should be",
        ),
        (
            {
                "tools": [
                    {
                        **TOOL,
                        "strict": True,
                        "input_schema": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}},
                    }
                ]
            },
            "'maxLength'",
        ),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "no tool named 'nope'"),
        ({"tools": [TOOL], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "any"}}, "requires at least one tool"),
    ],
)
def test_validation_errors(sim, extra, expected):
    message = _error(sim, {"model": MODEL, "max_tokens": 16, "messages": user("hi"), **extra})
    assert expected in message, message


def test_prefill_with_output_config_is_rejected(sim):
    messages = [*user("hi"), {"role": "assistant", "content": "{"}]
    message = _error(sim, {"model": MODEL, "max_tokens": 16, "messages": messages, "output_config": FORMAT})
    assert "Prefilling" in message


def test_tool_stream_raw_events(sim):
    payload = {
        "model": MODEL,
        "max_tokens": 1024,
        "stream": True,
        "messages": user(BAD_TICKET),
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "record_ticket"},
    }
    status, _, body = raw_post(sim.base_url, "/v1/messages", payload)
    events = parse_sse(body)
    assert status == 200
    start = json.loads(next(d for e, d in events if e == "content_block_start"))
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    delta = json.loads(next(d for e, d in events if e == "content_block_delta"))
    assert delta["delta"]["type"] == "input_json_delta"
    tail = json.loads(next(d for e, d in events if e == "message_delta"))
    assert tail["delta"]["stop_reason"] == "tool_use"


def test_tools_count_as_input_tokens(sim):
    base = {"model": MODEL, "messages": user("hello")}
    status, _, plain = raw_post(sim.base_url, "/v1/messages/count_tokens", base)
    status2, _, with_tool = raw_post(sim.base_url, "/v1/messages/count_tokens", {**base, "tools": [TOOL]})
    assert status == status2 == 200
    assert json.loads(with_tool)["input_tokens"] > json.loads(plain)["input_tokens"] + 50


def test_bad_request_is_not_an_sdk_crash(sim):
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="not supported"):
        client.messages.create(
            model=MODEL, max_tokens=16, messages=user("hi"), output_config=_fmt({"type": "number", "maximum": 3})
        )
    client.close()


@pytest.mark.asyncio
async def test_models_without_structured_outputs_refuse_it_but_take_a_plain_tool(sim):
    sim.configure(no_structured_output="claude-opus-4-1, claude-sonnet-4-5")
    old = "claude-opus-4-1"
    choice = {"type": "tool", "name": "record_ticket"}
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="structured outputs are not supported by the model"):
            await client.messages.create(model=old, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT)
        with pytest.raises(anthropic.BadRequestError, match="strict tools are not supported"):
            await client.messages.create(
                model=old,
                max_tokens=1024,
                messages=user(BAD_TICKET),
                tools=[{**TOOL, "strict": True}],
                tool_choice=choice,
            )
        fallback = await client.messages.create(
            model=old, max_tokens=1024, messages=user(BAD_TICKET), tools=[TOOL], tool_choice=choice
        )
        newer = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        )
        old_info = await client.models.retrieve(old)
        new_info = await client.models.retrieve(MODEL)
        listed = {m.id: m.capabilities.structured_outputs.supported async for m in client.models.list()}
    assert fallback.stop_reason == "tool_use" and valid(fallback.content[0].input)
    assert valid(json.loads(newer.content[0].text))
    assert old_info.capabilities.structured_outputs.supported is False and old_info.lifecycle == "active"
    assert new_info.capabilities.structured_outputs.supported is True
    assert listed["claude-sonnet-4-5-20250929"] is False and listed["claude-opus-4-6"] is True


@pytest.mark.asyncio
async def test_invalid_output_in_a_stream(sim):
    sim.configure(invalid_output=1.0)
    async with aclient(sim) as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), output_config=FORMAT
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert _invalid(text) and final.usage.output_tokens == tokens(text)
    assert sim.stats()["structured"]["invalid"] == 1


@pytest.mark.asyncio
async def test_sdk_transformed_constraints_are_followed(sim):
    """The SDK's transform_schema moves constraints the API does not take into the
    description ("{minimum: 0, maximum: 1}"); the simulator follows them, as a model would."""

    class Place(pydantic.BaseModel):
        city: str
        zip: str | None = None

    class Review(pydantic.BaseModel):
        sentiment: str = pydantic.Field(json_schema_extra={"enum": ["positive", "negative"]})
        score: float = pydantic.Field(ge=0, le=1)
        stars: int = pydantic.Field(ge=1, le=5)
        tags: list[str] = pydantic.Field(min_length=2, max_length=3)
        place: Place
        others: list[Place]

    text = "Terrible blender bought in Paris on 2026-01-05, 3000 rpm, 49.99 dollars. Never again."
    async with aclient(sim) as client:
        parsed = await client.messages.parse(model=MODEL, max_tokens=2048, messages=user(text), output_format=Review)
    review = parsed.parsed_output
    assert isinstance(review, Review) and review.sentiment == "negative"
    assert 0 <= review.score <= 1 and 1 <= review.stars <= 5 and 2 <= len(review.tags) <= 3
    assert review.place.city == "Paris"


@pytest.mark.asyncio
async def test_tool_definitions_are_a_cacheable_prefix(sim):
    sim.configure(cache_min_tokens=1)
    tool = {**TOOL, "description": "Record a support ticket. " * 50, "cache_control": {"type": "ephemeral"}}
    async with aclient(sim) as client:
        first = await client.messages.create(model=MODEL, max_tokens=1024, messages=user(BAD_TICKET), tools=[tool])
        second = await client.messages.create(model=MODEL, max_tokens=1024, messages=user(GOOD_TICKET), tools=[tool])
        other = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user(GOOD_TICKET), tools=[{**tool, "name": "other"}]
        )
    assert first.usage.cache_creation_input_tokens > 300 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert other.usage.cache_read_input_tokens == 0  # another tool: another prefix
