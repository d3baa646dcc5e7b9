"""Django's ASGI handler, without its two thread hops per request where they do nothing.

Django's ``ASGIHandler`` gives each request a ``ThreadSensitiveContext``: the first
``sync_to_async`` of the request starts a new thread for it (and leaving the context starts
another one to join it). Django itself makes two such hops per request, whatever the view:

- ``request_started.asend``: its receivers are sync (``reset_queries``,
  ``close_old_connections``), so they run on the request's thread, which does not exist
  yet: Django starts it to clear query logs and close connections that thread cannot have;
- ``sync_to_async(response.close)``: ``request_finished`` (``close_old_connections``,
  ``close_caches``, ``reset_urlconf``) on that same thread, to close the connections the
  request's hops opened there.

The playground's stream (an async view; the user comes from ``userload``) makes no hop of
its own, so those two were its only ones: two thread starts blocking the event loop while
the new thread waits for the GIL, then two hops that queue for it, ahead of the first token
(issue 17). ``InlineSignalsASGIHandler`` skips them when they are provably no-ops:

- ``request_started`` is sent on the loop when every receiver is one of Django's own
  (``NO_IO_RECEIVERS``): they touch only the calling thread's connections, and neither
  the loop's thread (the ORM refuses to run there) nor a fresh one has any;
- an ``EventStreamResponse`` (whose ``close()`` does no I/O) is closed on the loop when the
  request made no thread-sensitive hop, so that no thread of its own, and no connection on
  one, exists, and when every ``request_finished`` receiver is one of Django's own and
  the cache backends are in-process ones.

In every other case (another receiver connected, a view that queried the database through
``sync_to_async``, any other response) the handler does exactly what Django's does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.dispatch import Signal
from django.urls import set_script_prefix

from .sse import EventStreamResponse

__all__ = ["NO_IO_RECEIVERS", "InlineSignalsASGIHandler", "signal_runs_inline"]

# Django's own receivers of request_started / request_finished: they act on the calling
# thread's database connections, the context's caches and URLconf, and do no other I/O.
NO_IO_RECEIVERS: frozenset[Callable[..., Any]] = frozenset(
    {reset_queries, close_old_connections, close_caches, reset_urlconf}
)
IN_PROCESS_CACHES = frozenset(
    {"django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache"}
)


def _receivers(signal: Signal, sender: Any) -> Iterable[Any] | None:
    """The signal's live receivers for ``sender``, or None if any is async."""
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return None if async_receivers else sync_receivers


def signal_runs_inline(signal: Signal, sender: Any) -> bool:
    """True when every receiver of ``signal`` for ``sender`` is one of Django's no-I/O ones."""
    receivers = _receivers(signal, sender)
    return receivers is not None and all(r in NO_IO_RECEIVERS for r in receivers)


def _caches_in_process() -> bool:
    return all(conf.get("BACKEND") in IN_PROCESS_CACHES for conf in settings.CACHES.values())


def _request_thread_exists() -> bool:
    """Whether this request's thread-sensitive hops have (or may have) a thread of their own."""
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return True  # called from sync code: hops go to its thread, which we cannot see into
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is None or context in SyncToAsync.context_to_thread_executor


class InlineSignalsASGIHandler(ASGIHandler):
    """``ASGIHandler`` whose ``handle`` is Django 6.1's, except where the two signals are sent."""

    async def handle(
        self,
        scope: Any,
        receive: Any,
        send: Any,
    ) -> None:
        # Django 6.1's ASGIHandler.handle; the two changes are marked (tests/test_streams.py
        # checks that Django's own is still the one this was copied from).
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return

        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            # changed: Django's own receivers on the loop, no thread started for them
            if signal_runs_inline(signals.request_started, self.__class__):
                signals.request_started.send(sender=self.__class__, scope=scope)
            else:
                await signals.request_started.asend(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                body_file.close()
                await self.send_response(error_response, send)
                await sync_to_async(error_response.close)()
                return

            class RequestProcessed(Exception):
                pass

            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        await self.send_response(response, send)
                        raise RequestProcessed
                except* (RequestProcessed, RequestAborted):
                    pass
            except BaseExceptionGroup as exception_group:
                if len(exception_group.exceptions) == 1:
                    raise exception_group.exceptions[0]  # noqa: B904  (as Django's)
                raise

            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            elif self.closes_inline(response):  # changed: no hop when it would do nothing
                response.close()
            else:
                await sync_to_async(response.close)()

    def closes_inline(self, response: Any) -> bool:
        """Close ``response`` on the loop: an SSE response, no request thread, Django's receivers."""
        return (
            type(response).close is EventStreamResponse.close
            and isinstance(response, EventStreamResponse)
            and not _request_thread_exists()
            and signal_runs_inline(signals.request_finished, self.__class__)
            and _caches_in_process()
        )
