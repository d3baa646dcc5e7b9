"""The REST API through the ASGI app (Django's AsyncClient drives ``ASGIHandler``).

Jobs created through the API are processed by the real runner against the real
simulator, then read back through the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import AsyncClient

from llmjobs.api_rate import ApiRateCount, count_request
from llmjobs.models import ApiToken, BatchJob
from llmjobs.runner import run_job
from llmjobs.tokens import token_create, token_hash

from .fill_helpers import HeldFill

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": ["string", "null"]}, "product": {"type": ["string", "null"]}},
    "required": ["sentiment", "product"],
}


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    """The async views' ORM work ran on the shared sync thread: close its connections, so
    that PostgreSQL can drop the test database at the end."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def api_sim(sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    settings.LLMJOBS_WEBHOOK_ALLOW_PRIVATE = False
    return sim


@pytest.fixture
def tokens(transactional_db):
    User = get_user_model()
    out = {}
    for name in ("alice", "bob"):
        user = User.objects.create_user(name, password="pw-123-" + name)
        out[name] = (user, token_create(user=user, name="tests")[1])
    return out


class TokenClient:
    """An AsyncClient that sends ``Authorization`` on every request (AsyncClient's own
    client-wide ``headers=`` reach the ASGI scope under their WSGI names)."""

    def __init__(self, authorization: str | None) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": authorization} if authorization else {}

    def get(self, path: str, **kw):
        return self.client.get(path, headers=self.headers, **kw)

    def post(self, path: str, data=None, **kw):
        return self.client.post(path, data, headers=self.headers, **kw)


def client_for(token: str | None) -> TokenClient:
    return TokenClient(f"Bearer {token}" if token else None)


def body(response) -> object:
    return json.loads(response.content)


async def create(client: TokenClient, **fields) -> object:
    payload = {"name": "api job", "template": "Summarize: {text}", "items": ["first doc", "second doc"], **fields}
    return await client.post("/api/v1/jobs", payload, content_type="application/json")


async def test_tokens_are_stored_hashed_and_auth_failures_are_401(tokens, api_sim):
    user, token = tokens["alice"]
    row = await ApiToken.objects.aget(user=user)
    assert row.token_hash == token_hash(token) and token not in (row.token_hash, row.prefix)
    for client in (
        client_for(None),
        client_for("llmj_not-a-real-token"),
        client_for(""),
        TokenClient(f"Basic {token}"),
        TokenClient(token),
    ):
        response = await client.get("/api/v1/jobs")
        assert response.status_code == 401, response.content
    user.is_active = False
    await user.asave()
    assert (await client_for(token).get("/api/v1/jobs")).status_code == 401


async def test_create_run_read_results_and_list(tokens, api_sim):
    client = client_for(tokens["alice"][1])
    response = await create(
        client,
        template="Extract the sentiment and product from: {review}",
        items=[{"review": "I love my Acme Phone"}, {"review": "The Zeta Blender broke"}, {"review": "ok"}],
        schema=SCHEMA,
        max_tokens=300,
    )
    assert response.status_code == 201, response.content
    created = body(response)
    assert set(created) == {"id", "status", "url"} and created["status"] == "queued"
    assert created["url"].endswith(f"/jobs/{created['id']}/")
    job = await BatchJob.objects.aget(pk=created["id"])
    assert job.output_schema == SCHEMA and job.owner_id == tokens["alice"][0].pk

    await run_job(job.pk)  # what the worker does with the queued task

    detail = body(await client.get(f"/api/v1/jobs/{job.pk}"))
    assert detail["status"] == "succeeded" and detail["total"] == 3
    assert detail["counts"] == {"succeeded": 3, "failed": 0, "cancelled": 0, "remaining": 0}
    assert detail["usage"]["input_tokens"] > 0 and float(detail["cost_usd"]) > 0
    assert detail["has_schema"] and detail["finished_at"] and detail["estimate_usd"]

    response = await client.get(f"/api/v1/jobs/{job.pk}/results")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/x-ndjson")
    assert response.streaming
    lines = [json.loads(line) async for chunk in response.streaming_content for line in chunk.decode().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[0]["input"] == {"review": "I love my Acme Phone"}
    assert set(lines[0]["output"]) == {"sentiment", "product"} and lines[0]["status"] == "succeeded"
    assert lines[0]["error"] is None and lines[0]["usage"]["output_tokens"] > 0

    response = await client.get(f"/api/v1/jobs/{job.pk}/results?status=failed")
    assert b"".join([chunk async for chunk in response.streaming_content]) == b""
    bad = await client.get(f"/api/v1/jobs/{job.pk}/results?status=nope")
    assert bad.status_code == 422 and body(bad)["detail"][0]["loc"] == ["body", "status"]

    listed = body(await client.get("/api/v1/jobs"))
    assert [j["id"] for j in listed] == [job.pk]
    assert body(await client.get("/api/v1/jobs?status=failed")) == []


@pytest.fixture
def held_fill(monkeypatch):
    held = HeldFill(monkeypatch)
    yield held
    held.release_and_join()


async def test_create_queues_the_job_while_its_items_are_still_inserted(tokens, api_sim, held_fill):
    """Issue 17: 201 once the first items are committed; the detail says the rest are on their way."""
    client = client_for(tokens["alice"][1])
    response = await create(client, items=[f"doc {i}" for i in range(1000)], budget_usd=2.5, dedup=False)
    assert response.status_code == 201, response.content
    created = body(response)
    assert created["status"] == "queued"
    await asyncio.to_thread(held_fill.wait_until_held)
    job = await BatchJob.objects.aget(pk=created["id"])
    assert job.task_id and job.budget_usd == Decimal("2.5") and not job.dedup  # set before it was queued
    detail = body(await client.get(f"/api/v1/jobs/{job.pk}"))
    assert detail["filling"] is True and detail["status"] == "queued"
    assert detail["total"] == 1000 and detail["progress"] == 0  # not finished, and the whole count
    assert detail["counts"] == {"succeeded": 0, "failed": 0, "cancelled": 0, "remaining": 1000}
    assert await job.items.acount() == 200
    await asyncio.to_thread(held_fill.release_and_join)
    detail = body(await client.get(f"/api/v1/jobs/{job.pk}"))
    assert detail["filling"] is False and detail["total"] == 1000 and await job.items.acount() == 1000

    await run_job(job.pk)  # what the worker does with the queued task
    detail = body(await client.get(f"/api/v1/jobs/{job.pk}"))
    assert detail["status"] == "succeeded" and detail["counts"]["succeeded"] == 1000


async def test_batch_mode_creates_every_item_before_it_is_queued(tokens, api_sim, held_fill):
    client = client_for(tokens["alice"][1])
    response = await create(client, items=[f"doc {i}" for i in range(1000)], mode="batch")
    assert response.status_code == 201, response.content
    job = await BatchJob.objects.aget(pk=body(response)["id"])
    assert job.status == "queued" and job.mode == "batch" and job.filling_until is None
    assert not held_fill.reached.is_set() and await job.items.acount() == 1000


async def test_a_quota_refuses_the_whole_list_before_anything_is_written(tokens, api_sim, held_fill, settings):
    settings.LLMJOBS_QUOTA_ITEMS_PER_DAY = 999
    response = await create(client_for(tokens["alice"][1]), items=[f"doc {i}" for i in range(1000)])
    assert response.status_code == 422 and "over your limit of 999 items a day" in response.content.decode()
    assert not await BatchJob.objects.aexists()


async def test_another_users_job_is_404_everywhere(tokens, api_sim):
    alice, bob = client_for(tokens["alice"][1]), client_for(tokens["bob"][1])
    job_id = body(await create(alice))["id"]
    for method, path in [
        ("get", f"/api/v1/jobs/{job_id}"),
        ("get", f"/api/v1/jobs/{job_id}/results"),
        ("post", f"/api/v1/jobs/{job_id}/cancel"),
        ("post", f"/api/v1/jobs/{job_id}/retry"),
        ("get", "/api/v1/jobs/999999"),
    ]:
        response = await getattr(bob, method)(path)
        assert response.status_code == 404, (path, response.content)
    assert body(await bob.get("/api/v1/jobs")) == []
    assert (await BatchJob.objects.aget(pk=job_id)).status == "queued"  # bob changed nothing


async def test_cancel_and_retry(tokens, api_sim):
    client = client_for(tokens["alice"][1])
    job_id = body(await create(client))["id"]
    response = await client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and body(response)["status"] == "cancelled"
    assert body(response)["counts"]["cancelled"] == 2
    response = await client.post(f"/api/v1/jobs/{job_id}/retry")
    assert response.status_code == 200, response.content
    assert body(response)["reset"] == 2 and body(response)["job"]["status"] == "queued"
    await run_job(job_id)
    assert body(await client.get(f"/api/v1/jobs/{job_id}"))["status"] == "succeeded"
    again = await client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already finished" in body(again)["detail"]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"model": "gpt-4"}, "model", "unknown model 'gpt-4'"),
        ({"template": "Hi {"}, "template", "never closed"),
        ({"schema": {"type": "string"}}, "schema", "an object at the top level"),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", "private or loopback"),
        ({"webhook_url": "ftp://example.com/"}, "webhook_url", "http(s) URL"),
        ({"budget_usd": 0}, "budget_usd", "greater than 0"),
        ({"template": "{missing}"}, "items", "placeholder {missing} is not in the data"),
        ({"items": []}, "items", "at least 1"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
async def test_input_errors_are_422_with_the_field(tokens, api_sim, fields, field, message):
    response = await create(client_for(tokens["alice"][1]), **fields)
    assert response.status_code == 422, response.content
    detail = body(response)["detail"]
    assert any(d["loc"][-1] == field and message in d["msg"] for d in detail), detail
    assert not await BatchJob.objects.aexists()  # nothing half-created


async def test_rate_limit_per_user(tokens, api_sim, settings):
    settings.LLMJOBS_API_RATE_LIMIT = 3
    alice, bob = client_for(tokens["alice"][1]), client_for(tokens["bob"][1])
    if 60 - time.time() % 60 < 5:  # a fixed one-minute window: not across its end
        await asyncio.sleep(60 - time.time() % 60 + 0.2)
    codes = [(await alice.get("/api/v1/jobs")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert (await bob.get("/api/v1/jobs")).status_code == 200  # per user
    # The count is in the database (shared by every web process), one row per user.
    assert await sync_to_async(lambda: sorted(ApiRateCount.objects.values_list("user__username", "count")))() == [
        ("alice", 4),
        ("bob", 1),
    ]


async def test_a_new_window_starts_the_count_again_and_drops_the_old_one(tokens):
    def hits() -> list:
        alice = tokens["alice"][0]
        return [
            count_request(alice.pk, now=600.0),
            count_request(alice.pk, now=630.5),
            count_request(alice.pk, now=660.0),  # the next minute
            list(ApiRateCount.objects.filter(user=alice).values_list("minute", "count")),
        ]

    assert await sync_to_async(hits)() == [(1, 60.0), (2, 29.5), (1, 60.0), [(11, 1)]]


async def test_openapi_and_docs(api_sim):
    client = AsyncClient()
    spec = body(await client.get("/api/v1/openapi.json"))
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/results"} <= set(spec["paths"])
    assert {"/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/retry"} <= set(spec["paths"])
    job_in = spec["components"]["schemas"]["JobIn"]["properties"]
    assert {"name", "template", "model", "schema", "webhook_url", "items", "max_tokens"} <= set(job_in)
    assert spec["components"]["securitySchemes"]["TokenAuth"]["scheme"] == "bearer"
    docs = await client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"openapi.json" in docs.content


async def test_api_token_command_prints_token_and_secret(tokens):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    await sync_to_async(call_command)("api_token", "bob", "--json", stdout=out)
    printed = json.loads(out.getvalue())
    assert printed["token"].startswith("llmj_") and printed["webhook_secret"].startswith("whsec_")
    assert (await client_for(printed["token"]).get("/api/v1/jobs")).status_code == 200
