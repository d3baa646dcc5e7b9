"""Every error class of the SDK, with the real status/type pairs and headers."""

from __future__ import annotations

import json

import anthropic
import pytest

from llmjobs.simulator.server import SimulatorProcess

from .conftest import HEADERS, MODEL, aclient, raw_post, user


def error_type(exc: anthropic.APIStatusError) -> str:
    assert exc.body["type"] == "error"
    assert exc.body["request_id"].startswith("req_")
    assert exc.response.headers["request-id"] == exc.body["request_id"]
    return exc.body["error"]["type"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "error_class", "status", "kind"),
    [
        ("429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("529", anthropic.OverloadedError, 529, "overloaded_error"),
        ("500", anthropic.InternalServerError, 500, "api_error"),
        ("drop_stream", anthropic.InternalServerError, 500, "api_error"),  # not a stream: a 500
    ],
)
async def test_injected_faults(sim, fault, error_class, status, kind):
    sim.inject(fault)
    async with aclient(sim) as client:
        with pytest.raises(error_class) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
        after = await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert caught.value.status_code == status
    assert error_type(caught.value) == kind
    assert after.content[0].text  # one fault per injected name
    if fault == "429":
        assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.asyncio
async def test_faults_apply_in_order_and_the_header_overrides(sim):
    sim.inject("529", "500")
    async with aclient(sim) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(
                model=MODEL, max_tokens=16, messages=user("hi"), extra_headers={"x-sim-fault": "429"}
            )
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
        assert not isinstance(caught.value, anthropic.OverloadedError)
        await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))


def test_unknown_fault_names_are_rejected(sim):
    from llmjobs.simulator.server import SimulatorError

    with pytest.raises(SimulatorError):
        sim.inject("explode")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setting", "error_class"),
    [("fail_500", anthropic.InternalServerError), ("fail_529", anthropic.OverloadedError)],
)
async def test_random_fault_rates(sim, setting, error_class):
    sim.configure(**{setting: 1.0})
    async with aclient(sim) as client:
        for _ in range(3):
            with pytest.raises(error_class):
                await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))


@pytest.mark.asyncio
async def test_random_faults_are_seeded_and_reproducible(sim):
    async def outcomes() -> list[int]:
        codes = []
        async with aclient(sim) as client:
            for i in range(30):
                try:
                    await client.messages.create(model=MODEL, max_tokens=8, messages=user(f"hi {i}"))
                    codes.append(200)
                except anthropic.APIStatusError as exc:
                    codes.append(exc.status_code)
        return codes

    sim.configure(fail_500=0.3, fail_529=0.2, seed=7)
    first = await outcomes()
    sim.reset()
    second = await outcomes()
    assert first == second
    assert {200, 500, 529} == set(first)


@pytest.mark.asyncio
async def test_authentication(sim):
    sim.configure(api_key="right-key")
    async with aclient(sim, api_key="wrong-key") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert caught.value.status_code == 401 and error_type(caught.value) == "authentication_error"
    async with aclient(sim, api_key="right-key") as client:  # the SDK sends Authorization: Bearer
        await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    status, _, _ = raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("hi")},
                            headers={**HEADERS, "x-api-key": "right-key"})  # fmt: skip
    assert status == 200
    headers = {k: v for k, v in HEADERS.items() if k != "x-api-key"}
    status, _, body = raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("hi")},
                               headers=headers)  # fmt: skip
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_api_key_flag():
    with SimulatorProcess("--api-key", "cli-key", "--ttft", "0", "--tps", "0") as server:
        with anthropic.Anthropic(base_url=server.base_url, api_key="nope", max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError):
                client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
        with anthropic.Anthropic(base_url=server.base_url, api_key="cli-key", max_retries=0) as client:
            assert client.messages.create(model=MODEL, max_tokens=16, messages=user("hi")).content
        assert server.stats()["by_status"] == {"200": 1, "401": 1}


@pytest.mark.asyncio
async def test_unknown_model_is_not_found(sim):
    async with aclient(sim) as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(model="claude-imaginary-9", max_tokens=16, messages=user("hi"))
    assert error_type(caught.value) == "not_found_error"
    assert caught.value.body["error"]["message"] == "model: claude-imaginary-9"


BAD_REQUESTS = [
    ({"temperature": 0.5}, "temperature: "),
    ({"top_p": 0.9}, "top_p: "),
    ({"top_k": 5}, "top_k: "),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("extra", "message"), BAD_REQUESTS)
async def test_sampling_parameters_are_rejected(sim, extra, message):
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"), extra_body=extra)
    assert error_type(caught.value) == "invalid_request_error"
    assert caught.value.body["error"]["message"].startswith(message)
    assert "not supported" in caught.value.body["error"]["message"]


INVALID = [
    ({"max_tokens": 8, "messages": user("hi")}, "model: Field required"),
    ({"model": 3, "max_tokens": 8, "messages": user("hi")}, "model: Input should be a valid string"),
    ({"model": MODEL, "messages": user("hi")}, "max_tokens: Field required"),
    (
        {"model": MODEL, "max_tokens": 0, "messages": user("hi")},
        "max_tokens: Input should be greater than or equal to 1",
    ),
    ({"model": MODEL, "max_tokens": "9", "messages": user("hi")}, "max_tokens: Input should be a valid integer"),
    ({"model": MODEL, "max_tokens": True, "messages": user("hi")}, "max_tokens: Input should be a valid integer"),
    ({"model": MODEL, "max_tokens": 8}, "messages: Field required"),
    ({"model": MODEL, "max_tokens": 8, "messages": []}, "messages: at least one message is required"),
    ({"model": MODEL, "max_tokens": 8, "messages": [{"role": "assistant", "content": "x"}]}, "first message"),
    ({"model": MODEL, "max_tokens": 8, "messages": user("a") + user("b")}, "roles must alternate"),
    ({"model": MODEL, "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "max_tokens": 8, "messages": user("")}, "non-empty content"),
    ({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": []}]}, "non-empty content"),
    (
        {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "text content blocks must be non-empty",
    ),
    ({"model": MODEL, "max_tokens": 8, "messages": user("hi"), "system": 5}, "system: "),
    ({"model": MODEL, "max_tokens": 8, "messages": user("hi"), "stop_sequences": "END"}, "stop_sequences: "),
    ({"model": MODEL, "max_tokens": 10**6, "messages": user("hi")}, "maximum allowed number of output tokens"),
]


@pytest.mark.parametrize(("payload", "message"), INVALID)
def test_invalid_requests(sim, payload, message):
    status, headers, body = raw_post(sim.base_url, "/v1/messages", payload)
    error = json.loads(body)
    assert status == 400, error
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]
    assert headers["request-id"] == error["request_id"]


@pytest.mark.asyncio
async def test_invalid_request_through_the_sdk(sim):
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(
                model=MODEL,
                max_tokens=16,
                messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            )


def test_a_final_assistant_message_may_be_empty(sim):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    status, _, _ = raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": messages})
    assert status == 200


def test_missing_anthropic_version(sim):
    headers = {k: v for k, v in HEADERS.items() if k != "anthropic-version"}
    status, _, body = raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("hi")},
                               headers=headers)  # fmt: skip
    assert status == 400
    assert json.loads(body)["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_invalid_json(sim):
    status, _, body = raw_post(sim.base_url, "/v1/messages", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_request_too_large(sim):
    sim.configure(max_body=2000)
    async with aclient(sim) as client:
        with pytest.raises(anthropic.ContentTooLargeError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("x" * 5000))
    assert caught.value.status_code == 413 and error_type(caught.value) == "request_too_large"


def test_unknown_path_is_a_json_404(sim):
    status, _, body = raw_post(sim.base_url, "/v1/nothing", {})
    assert status == 404
    assert json.loads(body)["error"]["type"] == "not_found_error"


@pytest.mark.asyncio
async def test_rate_limit_429_headers(sim):
    sim.configure(rpm=3)
    async with aclient(sim) as client:
        raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=user("hi"))
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "3"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "2"
        assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert "anthropic-ratelimit-input-tokens-limit" not in raw.headers  # not configured
        await raw.parse()
        for _ in range(2):
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=user("hi"))
    headers = caught.value.response.headers
    assert error_type(caught.value) == "rate_limit_error"
    assert "3 requests per minute" in caught.value.body["error"]["message"]
    assert 19 <= int(headers["retry-after"]) <= 20  # one request refills in 60/3 s
    assert headers["anthropic-ratelimit-requests-limit"] == "3"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    stats = sim.stats()
    assert stats["by_status"] == {"200": 3, "429": 1}


@pytest.mark.asyncio
async def test_input_token_limit(sim):
    sim.configure(itpm=100)
    async with aclient(sim) as client:
        await client.messages.create(model=MODEL, max_tokens=16, messages=user("x" * 600))  # 150 tokens: debt
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert "input tokens per minute" in caught.value.body["error"]["message"]
    assert int(caught.value.response.headers["retry-after"]) >= 30
    assert caught.value.response.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"


@pytest.mark.asyncio
async def test_output_tokens_are_reserved_then_refunded(sim):
    import asyncio

    sim.configure(otpm=1000)
    async with aclient(sim) as client:
        raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=1000, messages=user("hi"))
        message = await raw.parse()
        remaining = int(raw.headers["anthropic-ratelimit-output-tokens-remaining"])
        assert 1000 - message.usage.output_tokens <= remaining <= 1000  # reserved 1000, refunded the rest
        # A request in flight holds its max_tokens reservation ...
        hanging = asyncio.create_task(
            client.messages.create(
                model=MODEL, max_tokens=800, messages=user("h"), extra_headers={"x-sim-fault": "hang"}
            )
        )
        await asyncio.to_thread(wait_in_flight, sim, 1)
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model=MODEL, max_tokens=800, messages=user("blocked"))
        assert "output tokens per minute" in caught.value.body["error"]["message"]
        # ... and gives it all back when it ends without output.
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)
        await asyncio.to_thread(wait_in_flight, sim, 0)
        await client.messages.create(model=MODEL, max_tokens=800, messages=user("admitted"))


@pytest.mark.asyncio
async def test_capacity_answers_529_while_full(sim):
    import asyncio

    sim.configure(capacity=2)
    async with aclient(sim) as client:
        hanging = [
            asyncio.create_task(
                client.messages.create(
                    model=MODEL, max_tokens=16, messages=user(f"hang {i}"), extra_headers={"x-sim-fault": "hang"}
                )
            )
            for i in range(2)
        ]
        await asyncio.to_thread(wait_in_flight, sim, 2)
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(model=MODEL, max_tokens=16, messages=user("one more"))
        assert error_type(caught.value) == "overloaded_error"
        for task in hanging:
            task.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)
        await asyncio.to_thread(wait_in_flight, sim, 0)
        await client.messages.create(model=MODEL, max_tokens=16, messages=user("room again"))
    stats = sim.stats()
    assert stats["by_status"] == {"200": 1, "499": 2, "529": 1}
    assert stats["peak_in_flight"] == 3


def wait_in_flight(sim, n: int) -> None:
    from .conftest import wait_until

    wait_until(lambda: sim.stats(brief=True)["in_flight"] == n, what=f"{n} requests in flight")


@pytest.mark.asyncio
async def test_hang_times_out_and_is_released_on_disconnect(sim):
    async with aclient(sim, timeout=0.3) as client:
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(
                model=MODEL, max_tokens=16, messages=user("hi"), extra_headers={"x-sim-fault": "hang"}
            )
    import asyncio

    await asyncio.to_thread(wait_in_flight, sim, 0)
    assert sim.stats()["by_status"] == {"499": 1}
