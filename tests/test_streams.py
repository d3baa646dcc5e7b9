"""The streaming views through the real ASGI app (``project.asgi.application``): the async
middleware chain, one shared progress poller per job, the per-user cap on open streams.

Each stream is one ASGI request driven in this test's event loop (``AsgiStream``): the
whole Django stack runs (middleware, login, CSRF, the view, the SSE generator), and
disconnecting is the ``http.disconnect`` message a server sends when the client goes.
The playground talks to the real simulator over TCP with the real SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from asgiref.sync import SyncToAsync, iscoroutinefunction, sync_to_async
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from django.db import OperationalError
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone

from llmjobs.jobs import job_create
from llmjobs.models import BatchJob
from llmjobs.web import playground, poller, progress, sse, userload
from llmjobs.web.poller import JobPoller
from llmjobs.web.userload import UserLoader, user_loader

CSRF = "a" * 32  # a valid cookie secret; sent back as the X-CSRFToken header


class AsgiStream:
    """One HTTP request to an ASGI app, read event by event, disconnected on demand."""

    def __init__(self, app, method: str, path: str, *, cookies: dict[str, str], body: bytes = b"") -> None:
        headers = [
            (b"host", b"testserver"),
            (b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()),
            (b"accept", b"text/event-stream"),
        ]
        if method == "POST":
            headers += [
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"x-csrftoken", CSRF.encode()),
                (b"referer", b"http://testserver/playground/"),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
        self.buffer = b""
        self.ended = False
        self.task = asyncio.create_task(app(scope, self.inbox.get, self.outbox.put))

    async def status(self) -> int:
        message = await self.outbox.get()
        assert message["type"] == "http.response.start", message
        return message["status"]

    async def body(self) -> bytes:
        while not self.ended:
            await self._more()
        return self.buffer

    async def _more(self) -> None:
        message = await self.outbox.get()
        assert message["type"] == "http.response.body", message
        self.buffer += message.get("body", b"")
        self.ended = not message.get("more_body", False)

    async def event(self) -> tuple[str, dict]:
        """The next SSE event (comments and the retry hint are skipped)."""
        while True:
            block, sep, rest = self.buffer.partition(b"\n\n")
            if sep:
                self.buffer = rest
                lines = block.decode().split("\n")
                name = next((line[7:] for line in lines if line.startswith("event: ")), None)
                if name:
                    data = next(line[6:] for line in lines if line.startswith("data: "))
                    return name, json.loads(data)
                continue
            if self.ended:
                raise EOFError("the stream ended")
            await self._more()

    async def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})
        await asyncio.wait_for(self.task, 30)


pytestmark = pytest.mark.usefixtures("close_async_connections")


@pytest.fixture
def asgi_app():
    from project.asgi import application

    return application


async def login(user) -> dict[str, str]:
    client = AsyncClient()
    await client.aforce_login(user)
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF}


async def running_job(user, n: int = 10) -> BatchJob:
    job = await sync_to_async(job_create)(
        name="watched", template="Say: {text}", model="claude-haiku-4-5", owner=user, texts=[f"t{i}" for i in range(n)]
    )
    await BatchJob.objects.filter(pk=job.pk).aupdate(status=BatchJob.Status.RUNNING, started_at=timezone.now())
    return job


async def wait_until(predicate, what: str) -> None:
    """Yield to the loop until ``predicate()``; bounded by a generous timeout, not a timing assertion."""
    async with asyncio.timeout(30):
        while not predicate():
            await asyncio.sleep(0.005)


# --- the middleware chain -------------------------------------------------------------------


def sync_adapted(handler: ASGIHandler) -> list[str]:
    """The hooks Django wrapped in sync_to_async while building the ASGI chain."""
    hooks = [*handler._view_middleware, *handler._template_response_middleware]
    return [repr(getattr(h, "func", h)) for h in hooks if isinstance(h, SyncToAsync)]


def test_the_asgi_middleware_chain_is_async_all_the_way(settings, caplog):
    settings.DEBUG = True  # Django logs each middleware it adapts to the other mode
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        handler = ASGIHandler()
    assert [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()] == []
    assert iscoroutinefunction(handler._middleware_chain)
    assert sync_adapted(handler) == []  # no process_view runs in a thread either
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]
    assert "CsrfViewMiddleware.process_view" in " ".join(sync_adapted(ASGIHandler()))  # Django's own would


STOCK_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_playground_request_makes_no_middleware_thread_hop(api, settings, monkeypatch):
    """Django's MiddlewareMixin hops to the one sync thread for each hook; ours run on the loop."""
    import django.utils.deprecation as deprecation

    hops: list[str] = []
    real = deprecation.sync_to_async

    def counting(fn, *args, **kwargs):
        hops.append(getattr(fn, "__qualname__", repr(fn)))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(deprecation, "sync_to_async", counting)
    api.configure(tps=400.0)
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    body = b"prompt=Hello+owls&model=claude-haiku-4-5&max_tokens=20"
    try:
        stream = AsgiStream(ASGIHandler(), "POST", reverse("llmjobs:playground_stream"), cookies=cookies, body=body)
        assert await stream.status() == 200
        names = [name for name, _ in [await stream.event() for _ in range(3)]]
        assert names[:2] == ["start", "ttft"]
        await stream.body()
        await asyncio.wait_for(stream.task, 30)
        print(hops)
        assert hops == []

        settings.MIDDLEWARE = [*STOCK_MIDDLEWARE, "axes.middleware.AxesMiddleware"]  # what it was
        stream = AsgiStream(ASGIHandler(), "POST", reverse("llmjobs:playground_stream"), cookies=cookies, body=body)
        assert await stream.status() == 200
        await stream.body()
        await asyncio.wait_for(stream.task, 30)
        assert len(hops) >= 7  # the measure works: each of Django's own hooks hopped
    finally:
        await playground.aclose_client()


def counting_hops(monkeypatch) -> list[str]:
    """Every ``sync_to_async`` call made from now on (asgiref's, whoever wraps it): its function."""
    hops: list[str] = []
    real = SyncToAsync.__call__

    async def call(self, *args, **kwargs):
        func = getattr(self.func, "func", self.func)  # a partial's function
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", call)
    return hops


PLAY_BODY = b"prompt=Hello+owls&model=claude-haiku-4-5&max_tokens=20"


async def play(app, cookies: dict[str, str]) -> tuple[int, bytes]:
    stream = AsgiStream(app, "POST", reverse("llmjobs:playground_stream"), cookies=cookies, body=PLAY_BODY)
    status = await stream.status()
    body = await stream.body()
    await asyncio.wait_for(stream.task, 30)
    return status, body


@pytest.fixture
def one_thread_loader(monkeypatch):
    """A user loader with one thread: which thread takes a lookup is then known."""
    loader = UserLoader(threads=1)
    monkeypatch.setattr(userload, "user_loader", loader)
    yield loader
    loader.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_playground_stream_makes_no_thread_hop_of_its_own_and_opens_no_connection(
    asgi_app, api, monkeypatch, one_thread_loader
):
    """Under load every thread hop waits for the GIL behind the loop and the other requests'
    threads, and every fresh SQLite connection re-parses the schema (issue 17). Django's
    async auth made two hops (session, user) on the request's fresh thread and connection,
    its async login_required one more (``user.is_authenticated``), and Django's handler two
    (request_started, closing the response: project.asgi's handler sends those on the loop).
    None is left; the user comes from a user-loading thread, over a connection kept open
    between streams."""
    api.configure(tps=400.0)
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    try:
        await play(asgi_app, cookies)  # warm: the shared client, the loader's connection
        hops = counting_hops(monkeypatch)
        for _ in range(3):
            status, body = await play(asgi_app, cookies)
            assert status == 200 and b"event: done" in body
        assert hops == []
        assert one_thread_loader.lookups == 4  # each stream still checks its session and user...
        assert one_thread_loader.connects == 1  # ...over the connection the first one opened
    finally:
        await playground.aclose_client()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_user_loader_reopens_a_connection_that_went_bad(asgi_app, api, monkeypatch, one_thread_loader):
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    try:
        status, _ = await play(asgi_app, cookies)
        assert status == 200 and one_thread_loader.connects == 1
        monkeypatch.setattr(UserLoader, "MAX_AGE", 0.0)  # as if the connection were a minute old
        status, _ = await play(asgi_app, cookies)
        assert status == 200 and one_thread_loader.connects == 2
        monkeypatch.setattr(UserLoader, "MAX_AGE", 60.0)
        real = userload._user_for
        calls = 0

        def stale_once(request):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OperationalError("server closed the connection unexpectedly")
            return real(request)

        monkeypatch.setattr(userload, "_user_for", stale_once)
        status, _ = await play(asgi_app, cookies)
        assert status == 200 and calls == 2  # retried once, on a fresh connection
        assert one_thread_loader.connects == 3
        one_thread_loader.close()
        assert one_thread_loader.connects == 3 and one_thread_loader._open == 0  # closed on demand
    finally:
        await playground.aclose_client()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_streams_share_a_few_kept_open_connections(asgi_app, api, settings):
    settings.LLMJOBS_STREAMS_PER_USER = 0
    api.configure(tps=400.0)
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    connects = user_loader.connects
    try:
        results = await asyncio.gather(*(play(asgi_app, cookies) for _ in range(3 * UserLoader.THREADS)))
        assert {status for status, _ in results} == {200}
        assert user_loader.connects - connects <= UserLoader.THREADS  # at most one per loader thread
    finally:
        await playground.aclose_client()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_playground_stream_still_checks_login_session_and_csrf(asgi_app, api):
    alice = await get_user_model().objects.acreate(username="alice")
    cookies = await login(alice)
    try:
        status, _ = await play(asgi_app, {"csrftoken": CSRF})  # no session
        assert status == 302
        status, _ = await play(asgi_app, {**cookies, "csrftoken": "b" * 32})  # token and cookie differ
        assert status == 403
        alice.set_password("a new password")  # the session's auth hash no longer matches
        await alice.asave()
        status, _ = await play(asgi_app, cookies)
        assert status == 302
        assert api.stats()["requests"] == 0  # none of them reached the API
        cookies = await login(alice)
        status, body = await play(asgi_app, cookies)
        assert status == 200 and b"event: done" in body
    finally:
        await playground.aclose_client()


# --- fewer writes per stream -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_coalesced_sends_the_first_events_at_once_then_what_gathered_in_one_write():
    more, last = asyncio.Event(), asyncio.Event()
    closed = []

    async def source():
        try:
            yield b"start;"
            yield b"ttft;"
            yield b"t1;"
            await more.wait()
            for k in range(2, 7):  # five tokens, all there before the writer looks again
                yield f"t{k};".encode()
            await last.wait()
            yield b"done;"
        finally:
            closed.append(True)

    chunks = sse.coalesced(source(), direct=3, interval=0.001)
    assert [await anext(chunks) for _ in range(3)] == [b"start;", b"ttft;", b"t1;"]  # one by one
    more.set()
    assert await anext(chunks) == b"t2;t3;t4;t5;t6;"  # one write for the five
    last.set()
    assert [c async for c in chunks] == [b"done;"]
    assert closed == [True]


@pytest.mark.asyncio
async def test_coalesced_groups_events_and_keeps_every_one_in_order():
    async def source():
        yield b"a;"
        for k in range(50):
            yield f"{k};".encode()
            if k % 10 == 9:
                await asyncio.sleep(0)  # the events come in bursts of ten

    chunks = [c async for c in sse.coalesced(source(), direct=1, interval=0.001)]
    assert chunks[0] == b"a;"
    assert b"".join(chunks) == b"a;" + b"".join(f"{k};".encode() for k in range(50))  # all, in order
    assert len(chunks) <= 6  # a write per burst at most, not one per event


@pytest.mark.asyncio
async def test_closing_coalesced_closes_its_source_and_errors_come_through():
    closed = []
    forever = asyncio.Event()

    async def source():
        try:
            yield b"start;"
            yield b"t1;"
            await forever.wait()
        finally:
            closed.append(True)

    chunks = sse.coalesced(source(), direct=1, interval=0.001)
    assert await anext(chunks) == b"start;"
    assert await anext(chunks) == b"t1;"
    await chunks.aclose()  # the client went away
    assert closed == [True]  # the source (the upstream call under it) was closed

    async def failing():
        yield b"start;"
        yield b"t1;"
        raise RuntimeError("upstream broke")

    chunks = sse.coalesced(failing(), direct=1, interval=0.001)
    received = []
    with pytest.raises(RuntimeError, match="upstream broke"):
        async for chunk in chunks:
            received.append(chunk)
    assert received == [b"start;", b"t1;"]  # what came before the error was sent first


# --- one poller per job ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_many_streams_of_one_job_share_one_poller_which_stops_when_the_last_leaves(asgi_app, monkeypatch):
    monkeypatch.setattr(progress, "TICK", 3600.0)  # one reading, then the poller sleeps: reads are countable
    user = await get_user_model().objects.acreate(username="alice")
    job = await running_job(user)
    cookies = await login(user)
    created = JobPoller.created
    url = reverse("llmjobs:job_events", args=[job.pk])
    streams = [AsgiStream(asgi_app, "GET", url, cookies=cookies) for _ in range(5)]
    for stream in streams:
        assert await stream.status() == 200
        name, data = await stream.event()
        assert (name, data["status"], data["total"]) == ("progress", "running", 10)
    assert JobPoller.created == created + 1  # five clients, one poller...
    (shared,) = poller.pollers().values()
    assert shared.job_id == job.pk and shared.subscribers == 5
    assert shared.reads == 1  # ...and one reading of the database for all of them (not five)

    for stream in streams[:4]:
        await stream.disconnect()
    assert shared.subscribers == 1 and not shared.task.done()  # someone still watches
    await streams[4].disconnect()
    await wait_until(lambda: shared.task.done(), "the poller to stop")
    assert shared.task.cancelled() and poller.pollers() == {}  # nobody left: it stopped
    assert sse.slots.held(user.pk) == 0  # every stream gave its slot back


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_shared_poller_delivers_every_change_and_done_to_every_stream(asgi_app, monkeypatch):
    monkeypatch.setattr(progress, "TICK", 0.01)
    user = await get_user_model().objects.acreate(username="alice")
    job = await running_job(user)
    cookies = await login(user)
    url = reverse("llmjobs:job_events", args=[job.pk])
    streams = [AsgiStream(asgi_app, "GET", url, cookies=cookies) for _ in range(3)]
    for stream in streams:
        assert await stream.status() == 200
    created = JobPoller.created
    for done in (4, 9):
        await BatchJob.objects.filter(pk=job.pk).aupdate(succeeded_count=done)
        for stream in streams:
            while (await stream.event())[1]["done"] != done:
                pass
    await BatchJob.objects.filter(pk=job.pk).aupdate(
        succeeded_count=10, status=BatchJob.Status.SUCCEEDED, finished_at=timezone.now()
    )
    for stream in streams:
        name = ""
        while name != "done":
            name, data = await stream.event()
        assert (data["status"], data["done"], data["active"]) == ("succeeded", 10, False)
        await stream.body()  # and the stream ends
        await asyncio.wait_for(stream.task, 30)
    assert JobPoller.created == created  # the streams that joined later used the same poller
    assert poller.pollers() == {}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_poller_that_cannot_read_the_database_gives_up_and_ends_its_streams(monkeypatch, caplog):
    from django.db import OperationalError

    class Broken:
        def __init__(self, job_id: int) -> None:
            self.calls = 0

        def read(self, now: float):
            self.calls += 1
            raise OperationalError("database is locked")

    events = progress.progress_events(1, tick=0.001)
    monkeypatch.setattr(progress, "JobReader", Broken)
    with caplog.at_level(logging.INFO, logger="llmjobs.web.poller"):
        body = [chunk async for chunk in events]
    assert body == [sse.retry(progress.RECONNECT_MS)]  # no done: EventSource reconnects later
    assert "database unreadable 3 times in a row (OperationalError: database is locked)" in caplog.text
    assert poller.pollers() == {}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_poller_retries_a_transient_database_error(monkeypatch):
    from django.db import OperationalError

    class Flaky:
        def __init__(self, job_id: int) -> None:
            self.calls = 0

        def read(self, now: float):
            self.calls += 1
            if self.calls == 1:
                raise OperationalError("server closed the connection unexpectedly")
            return {"status": "succeeded", "active": False, "done": 1}, True

    monkeypatch.setattr(progress, "JobReader", Flaky)
    body = b"".join([chunk async for chunk in progress.progress_events(1, tick=0.001)])
    assert b"event: progress" in body and body.endswith(
        b'event: done\ndata: {"status":"succeeded","active":false,"done":1}\n\n'
    )
    assert poller.pollers() == {}


# --- the per-user cap -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_streams_beyond_the_per_user_cap_are_refused_with_429(asgi_app, api, settings, monkeypatch):
    monkeypatch.setattr(progress, "TICK", 3600.0)
    settings.LLMJOBS_STREAMS_PER_USER = 2
    alice = await get_user_model().objects.acreate(username="alice")
    bob = await get_user_model().objects.acreate(username="bob")
    job = await running_job(alice)
    theirs = await running_job(bob)
    alice_cookies, bob_cookies = await login(alice), await login(bob)
    url = reverse("llmjobs:job_events", args=[job.pk])
    held = [AsgiStream(asgi_app, "GET", url, cookies=alice_cookies) for _ in range(2)]
    for stream in held:
        assert await stream.status() == 200
        await stream.event()

    refused = AsgiStream(asgi_app, "GET", url, cookies=alice_cookies)
    assert await refused.status() == 429
    assert b"at most 2 per user" in await refused.body()
    refused_play = AsgiStream(
        asgi_app,
        "POST",
        reverse("llmjobs:playground_stream"),
        cookies=alice_cookies,
        body=b"prompt=hi&model=claude-haiku-4-5&max_tokens=20",
    )
    assert await refused_play.status() == 429  # the playground counts too...
    assert api.stats()["requests"] == 0  # ...and a refused stream never called the API

    other = AsgiStream(asgi_app, "GET", reverse("llmjobs:job_events", args=[theirs.pk]), cookies=bob_cookies)
    assert await other.status() == 200  # the cap is per user

    await held[0].disconnect()
    await wait_until(lambda: sse.slots.held(alice.pk) == 1, "the slot to be released")
    again = AsgiStream(asgi_app, "GET", url, cookies=alice_cookies)
    assert await again.status() == 200  # a slot came back
    await again.event()
    for stream in (held[1], other, again):
        await stream.disconnect()
    await wait_until(lambda: poller.pollers() == {}, "the pollers to stop")
    assert sse.slots.held(alice.pk) == 0 and sse.slots.held(bob.pk) == 0


def test_the_deploy_check_knows_the_async_subclasses(settings):
    from llmjobs.web.middleware import check_async_middleware

    settings.SECURE_HSTS_SECONDS = 0
    ids = [m.id for m in check_async_middleware()]
    assert "security.W004" in ids  # Django's HSTS check runs although its path is not listed...
    assert not {"llmjobs.W001", "llmjobs.W002", "llmjobs.W003"} & set(ids)  # ...and nothing is "missing"
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "XFrameOptions" not in m]
    assert "llmjobs.W002" in [m.id for m in check_async_middleware()]
