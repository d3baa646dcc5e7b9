"""The real anthropic SDK against the simulator over TCP: shapes, usage, answers."""

from __future__ import annotations

import math
import typing
import warnings

import anthropic
import pytest
from anthropic.types import model_param

from .conftest import MODEL, aclient, user


@pytest.mark.asyncio
async def test_create_returns_a_real_message(sim):
    async with aclient(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=512, messages=user("Tell me about queues"))
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert len(message.content) == 1 and message.content[0].type == "text"
    text = message.content[0].text
    assert text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == math.ceil(len("Tell me about queues") / 4)
    assert message.usage.output_tokens == math.ceil(len(text) / 4)
    assert message.usage.cache_creation_input_tokens == 0 and message.usage.cache_read_input_tokens == 0


@pytest.mark.asyncio
async def test_answers_are_deterministic(sim):
    async with aclient(sim) as client:
        first = await client.messages.create(model=MODEL, max_tokens=512, messages=user("Explain backoff"))
        second = await client.messages.create(model=MODEL, max_tokens=512, messages=user("Explain backoff"))
        other = await client.messages.create(model=MODEL, max_tokens=512, messages=user("Explain jitter"))
    assert first.content[0].text == second.content[0].text
    assert first.content[0].text != other.content[0].text
    assert first.id != second.id


@pytest.mark.asyncio
async def test_input_tokens_count_system_and_every_message(sim):
    messages = [
        {"role": "user", "content": "a" * 40},
        {"role": "assistant", "content": [{"type": "text", "text": "b" * 40}]},
        {"role": "user", "content": [{"type": "text", "text": "c" * 39}]},
    ]
    async with aclient(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, system="s" * 80, messages=messages)
    assert message.usage.input_tokens == math.ceil((80 + 40 + 40 + 39) / 4)


def test_sync_client_create_and_stream(sim):
    with anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=0) as client:
        message = client.messages.create(model=MODEL, max_tokens=256, messages=user("sync hello"))
        with client.messages.stream(model=MODEL, max_tokens=256, messages=user("sync hello")) as stream:
            text = "".join(stream.text_stream)
    assert text == message.content[0].text


@pytest.mark.asyncio
async def test_max_tokens_truncates(sim):
    async with aclient(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=3, messages=user("Write a long essay"))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert 0 < len(message.content[0].text) <= 12


@pytest.mark.asyncio
async def test_stop_sequences_cut_before_the_sequence(sim):
    async with aclient(sim) as client:
        full = (
            (await client.messages.create(model=MODEL, max_tokens=1024, messages=user("Describe a worker")))
            .content[0]
            .text
        )
        words = full.split()
        stop = words[len(words) // 2]
        cut = full.index(stop)
        message = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=user("Describe a worker"), stop_sequences=["\x00never", stop]
        )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop
    assert message.content[0].text == full[:cut]
    assert message.usage.output_tokens == max(1, math.ceil(cut / 4))


@pytest.mark.asyncio
async def test_answer_tokens_sets_generic_length(sim):
    sim.configure(answer_tokens=200)
    async with aclient(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=4096, messages=user("Anything at all"))
    assert 180 <= message.usage.output_tokens <= 205


@pytest.mark.parametrize(
    ("prompt", "labels", "expected"),
    [
        (
            "Classify the sentiment of this review as one of: positive, negative, neutral.\n\n"
            "Review: I love it, excellent quality and great support.",
            {"positive", "negative", "neutral"},
            "positive",
        ),
        ("Is this message spam? Answer (spam|ham). Message: WIN a FREE prize, click now", {"spam", "ham"}, "spam"),
        (
            "Classify the support ticket.\nCategories: billing, shipping, technical\n"
            "Ticket: my shipping label never arrived",
            {"billing", "shipping", "technical"},
            "shipping",
        ),
        ("Classify this review as positive or negative: it broke after a day, terrible", None, "negative"),
        ("Labels: red, green, blue. Classify: the sky on a clear day over the sea", {"red", "green", "blue"}, None),
    ],
)
@pytest.mark.asyncio
async def test_classification_answers_one_of_its_labels(sim, prompt, labels, expected):
    async with aclient(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=16, messages=user(prompt))
    answer = message.content[0].text
    if labels is not None:
        assert answer in labels
    if expected is not None:
        assert answer == expected


@pytest.mark.asyncio
async def test_classification_labels_in_the_system_prompt(sim):
    async with aclient(sim) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=16,
            system="You are a classifier. Labels: urgent, normal, low. Reply with the label only.",
            messages=user("Server is down, this is urgent!"),
        )
    assert message.content[0].text == "urgent"


@pytest.mark.asyncio
async def test_summary_is_shorter_and_taken_from_the_document(sim):
    document = (
        "Asyncio lets a Python program run many network calls at once. Each call spends most of its time "
        "waiting for the server. A semaphore bounds how many calls run together, which keeps the program "
        "under its rate limit. Retries with exponential backoff and jitter absorb transient errors. "
        "Progress bars show how far the batch has come."
    )
    async with aclient(sim) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=512, messages=user(f"Summarize the following text:\n\n{document}")
        )
    summary = message.content[0].text
    assert 0 < len(summary) < len(document) / 2
    assert summary.split()[0] in document


@pytest.mark.asyncio
async def test_extraction_returns_json(sim):
    import json

    async with aclient(sim) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=256,
            messages=user("Extract the name, email and date from: John Smith (john@example.com) signed on 2024-03-05."),
        )
    data = json.loads(message.content[0].text)
    assert data == {"name": "John Smith", "email": "john@example.com", "date": "2024-03-05"}


@pytest.mark.asyncio
async def test_prefill_continues_the_assistant_message(sim):
    async with aclient(sim) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=256,
            messages=[
                {"role": "user", "content": "Extract the name from: Ada Lovelace wrote the first program."},
                {"role": "assistant", "content": "{"},
            ],
        )
    assert message.content[0].text == '"name":"Ada Lovelace"}'


@pytest.mark.asyncio
async def test_cache_control_creates_then_reads(sim):
    system = [
        # 4,350 tokens: above claude-haiku-4-5's minimum cacheable prefix (4,096)
        {"type": "text", "text": "You are a careful assistant. " * 600, "cache_control": {"type": "ephemeral"}},
    ]
    cached = math.ceil(len(system[0]["text"]) / 4)
    async with aclient(sim) as client:
        first = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=user("q1 " * 20))
        second = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=user("q2 " * 20))
        sim.reset()
        third = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=user("q1 " * 20))
    assert first.usage.cache_creation_input_tokens == cached and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == cached and second.usage.cache_creation_input_tokens == 0
    assert third.usage.cache_creation_input_tokens == cached  # reset forgets the cache
    total = math.ceil((len(system[0]["text"]) + 60) / 4)
    assert first.usage.input_tokens == second.usage.input_tokens == total - cached


@pytest.mark.asyncio
async def test_stream_matches_create(sim):
    async with aclient(sim) as client:
        created = await client.messages.create(model=MODEL, max_tokens=512, messages=user("Stream me a story"))
        async with client.messages.stream(model=MODEL, max_tokens=512, messages=user("Stream me a story")) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == created.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == created.usage.output_tokens
    assert final.usage.input_tokens == created.usage.input_tokens


@pytest.mark.asyncio
async def test_paced_stream_has_the_same_text(sim):
    sim.configure(tps=100_000.0, answer_tokens=300)
    async with aclient(sim) as client:
        async with client.messages.stream(model=MODEL, max_tokens=4096, messages=user("paced")) as stream:
            final = await stream.get_final_message()
        sim.configure(tps=0.0)
        created = await client.messages.create(model=MODEL, max_tokens=4096, messages=user("paced"))
    assert final.content[0].text == created.content[0].text


@pytest.mark.asyncio
async def test_stream_honours_max_tokens_and_stop_sequences(sim):
    async with aclient(sim) as client:
        async with client.messages.stream(model=MODEL, max_tokens=2, messages=user("Write more")) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 2
        full = (await client.messages.create(model=MODEL, max_tokens=999, messages=user("Write more"))).content[0].text
        stop = full.split()[3]
        async with client.messages.stream(
            model=MODEL, max_tokens=999, messages=user("Write more"), stop_sequences=[stop]
        ) as stream:
            final = await stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert final.content[0].text == full[: full.index(stop)]


@pytest.mark.asyncio
async def test_models_list_includes_every_sdk_model(sim):
    sdk_models = set(typing.get_args(typing.get_args(model_param.ModelParam)[0]))
    async with aclient(sim) as client:
        listed = {model.id async for model in client.models.list()}
        one = await client.models.retrieve("claude-haiku-4-5")
    assert sdk_models <= listed
    assert one.id == "claude-haiku-4-5"
    async with aclient(sim) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the SDK warns about old model ids
            for model in sorted(sdk_models):
                message = await client.messages.create(model=model, max_tokens=8, messages=user("hi"))
                assert message.model == model


@pytest.mark.asyncio
async def test_count_tokens(sim):
    async with aclient(sim) as client:
        counted = await client.messages.count_tokens(model=MODEL, system="x" * 40, messages=user("y" * 40))
    assert counted.input_tokens == 20
