"""``project.asgi``'s handler (llmjobs/web/handler.py): Django's ``ASGIHandler`` without the
two thread hops per request that do nothing, and Django's own hops wherever they may matter."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import threading

import pytest
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.urls import reverse

from llmjobs.web import playground, progress, sse
from llmjobs.web.handler import InlineSignalsASGIHandler

from .test_streams import AsgiStream, counting_hops, login, play, running_job

pytestmark = pytest.mark.usefixtures("close_async_connections")


@pytest.fixture
def asgi_app():
    from project.asgi import application

    return application


def test_the_handler_is_a_copy_of_djangos_own():
    """``InlineSignalsASGIHandler.handle`` is Django 6.1's with two changes: if Django's
    changed, copy it again (and keep the two changes) before updating this hash."""
    source = inspect.getsource(ASGIHandler.handle)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "c91f27c7fcdc3fff4f1c7082e91cb30f0bfaa5781ca632a116b1d9e607fd752a"
    ), source
    from project.asgi import django_application

    assert isinstance(django_application, InlineSignalsASGIHandler)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_stream_whose_view_opened_a_connection_is_closed_on_the_requests_thread(asgi_app, monkeypatch):
    """The progress stream's view looks the job up through ``sync_to_async``: a connection on
    the request's own thread. Closing the response must hop there (Django's way) and close it,
    or every stream would leave one open. (Seen as Django's check of each connection of that
    thread: an in-memory SQLite test database is never really closed.)"""
    monkeypatch.setattr(progress, "TICK", 3600.0)
    user = await get_user_model().objects.acreate(username="alice")
    job = await running_job(user)
    cookies = await login(user)
    opened: list[tuple[threading.Thread, object]] = []
    checked: list[tuple[threading.Thread, object]] = []  # by close_old_connections (request_finished)

    def created(sender, connection, **kwargs):
        opened.append((threading.current_thread(), connection))

    real_check = BaseDatabaseWrapper.close_if_unusable_or_obsolete

    def check(self):
        checked.append((threading.current_thread(), self))
        return real_check(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "close_if_unusable_or_obsolete", check)
    connection_created.connect(created)
    try:
        hops = counting_hops(monkeypatch)
        stream = AsgiStream(asgi_app, "GET", reverse("llmjobs:job_events", args=[job.pk]), cookies=cookies)
        assert await stream.status() == 200
        assert (await stream.event())[0] == "progress"
        await stream.disconnect()
    finally:
        connection_created.disconnect(created)
    assert "EventStreamResponse.close" in hops  # closed on the request's thread...
    on_request_thread = [(t, conn) for t, conn in opened if not t.is_alive()]  # it ended with the request
    assert on_request_thread
    assert all(pair in checked for pair in on_request_thread)  # ...whose connections Django then closed
    assert sse.slots.held(user.pk) == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_receivers_of_other_code_are_sent_the_django_way(asgi_app, api, monkeypatch):
    """A receiver the handler does not know may do I/O: it runs in a thread, as with Django's."""
    api.configure(tps=400.0)
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    loop_thread = threading.current_thread()
    ran: list[tuple[str, bool]] = []

    def on_started(sender, **kwargs):
        ran.append(("started", threading.current_thread() is loop_thread))

    def on_finished(sender, **kwargs):
        ran.append(("finished", threading.current_thread() is loop_thread))

    try:
        await play(asgi_app, cookies)  # warm: the shared client
        hops = counting_hops(monkeypatch)
        request_started.connect(on_started)
        try:
            status, body = await play(asgi_app, cookies)
        finally:
            request_started.disconnect(on_started)
        assert status == 200 and b"event: done" in body
        assert ran == [("started", False)]
        # the hop started the request's thread: closing goes there too (it may hold a connection)
        assert hops == ["Signal.asend.<locals>.sync_send", "EventStreamResponse.close"]

        ran.clear()
        hops.clear()
        request_finished.connect(on_finished)
        try:
            status, body = await play(asgi_app, cookies)
        finally:
            request_finished.disconnect(on_finished)
        assert status == 200 and b"event: done" in body
        assert ran == [("finished", False)] and hops == ["EventStreamResponse.close"]
        assert sse.slots.held(user.pk) == 0
    finally:
        await playground.aclose_client()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_stream_closed_by_a_disconnect_gives_its_slot_back_without_a_hop(asgi_app, api, monkeypatch):
    api.configure(tps=20.0)  # slow: the client leaves mid-stream
    user = await get_user_model().objects.acreate(username="alice")
    cookies = await login(user)
    try:
        await play(asgi_app, cookies)  # warm: the shared client
        hops = counting_hops(monkeypatch)
        stream = AsgiStream(
            asgi_app,
            "POST",
            reverse("llmjobs:playground_stream"),
            cookies=cookies,
            body=b"prompt=Hello+owls&model=claude-haiku-4-5&max_tokens=200",
        )
        assert await stream.status() == 200
        names = [(await stream.event())[0] for _ in range(3)]
        assert names == ["start", "ttft", "token"]
        await stream.disconnect()
        await asyncio.sleep(0)
        assert hops == [] and sse.slots.held(user.pk) == 0
    finally:
        await playground.aclose_client()
