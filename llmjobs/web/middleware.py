"""Django's own middleware, made async-native for the ASGI request path.

Django's middleware classes (``MiddlewareMixin``) are "sync and async capable",
but in async mode ``MiddlewareMixin.__acall__`` runs every ``process_request``
and ``process_response`` through ``sync_to_async(thread_sensitive=True)``, and
Django adapts a sync ``process_view`` the same way. Thread-sensitive calls all
queue on ONE thread: with the default stack that is about a dozen thread hops
per request, every one waiting behind the hops (and ORM queries) of every other
request. At 100 concurrent playground streams that queue was the +650 ms p95 on
time to first token (issue 17).

The subclasses here keep Django's code and behaviour and change only where it
runs: hooks that do no I/O (headers, cookies, lazy objects, CSRF tokens) run
inline on the event loop; the few cases that may touch the database (a session
that must be saved, messages kept in the session, ``CSRF_USE_SESSIONS``) still
hop to the thread. If an inline hook ever did reach the database, Django's
async-unsafe guard would raise ``SynchronousOnlyOperation``: a loud failure,
never a silently blocked loop. Under WSGI (the sync test ``Client``, a sync
server) they are Django's classes unchanged.

``project/settings.py`` lists these in ``MIDDLEWARE`` in Django's order.
``django-axes``' ``AxesMiddleware`` is async-native already (its own
``__acall__``; it hops only to render a lockout page) and stays as it is.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.registry import registry
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csp import ContentSecurityPolicyMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.test.utils import override_settings
from django.utils.module_loading import import_string

from . import userload

__all__ = [
    "AsyncAuthenticationMiddleware",
    "AsyncCommonMiddleware",
    "AsyncContentSecurityPolicyMiddleware",
    "AsyncCsrfViewMiddleware",
    "AsyncMessageMiddleware",
    "AsyncSecurityMiddleware",
    "AsyncSessionMiddleware",
    "AsyncXFrameOptionsMiddleware",
    "InlineAsyncMixin",
    "check_async_middleware",
]


class InlineAsyncMixin:
    """Put before a ``MiddlewareMixin`` class: in async mode its hooks run inline on the loop,
    except where ``request_needs_thread`` / ``response_needs_thread`` / ``view_needs_thread``
    say the hook may do blocking I/O."""

    sync_capable = True
    async_capable = True

    get_response: Any
    async_mode: bool

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]  # MiddlewareMixin sets async_mode
        if iscoroutinefunction(get_response):
            sync_view = getattr(self, "process_view", None)
            if sync_view is not None and not self.view_needs_thread():

                async def process_view(request: HttpRequest, view: Any, args: Any, kwargs: Any) -> Any:
                    return sync_view(request, view, args, kwargs)

                # Django awaits a coroutine process_view instead of wrapping it in sync_to_async.
                setattr(self, "process_view", process_view)  # noqa: B010  (an instance attribute over the method)

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    def view_needs_thread(self) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.request_needs_thread(request):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(request, response)
            else:
                response = process_response(request, response)
        return cast(HttpResponseBase, response)


class AsyncSecurityMiddleware(InlineAsyncMixin, SecurityMiddleware):
    """HTTPS redirect and security headers: no I/O."""


class AsyncContentSecurityPolicyMiddleware(InlineAsyncMixin, ContentSecurityPolicyMiddleware):
    """The CSP nonce and header: no I/O."""


class AsyncSessionMiddleware(InlineAsyncMixin, SessionMiddleware):
    """Creating the (lazy) session store is no I/O; saving a modified session is, so that hops."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        if session is None:
            return False
        return bool(session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not session.is_empty()


class AsyncCommonMiddleware(InlineAsyncMixin, CommonMiddleware):
    """User-agent check, slash/www redirects (URL resolving) and Content-Length: no I/O."""


class AsyncCsrfViewMiddleware(InlineAsyncMixin, CsrfViewMiddleware):
    """Cookie-based CSRF is no I/O (the body is already read under ASGI); session-based may be."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def view_needs_thread(self) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)


class AsyncAuthenticationMiddleware(InlineAsyncMixin, AuthenticationMiddleware):
    """Sets the lazy ``request.user`` and ``request.auser``: no I/O until a view asks.

    Under ASGI, ``request.auser()`` is ``userload.user_loader.load``: Django's own sync
    ``get_user`` (the same checks) in one hop to a long-lived thread with a kept-open
    connection, instead of Django's hop per query on the request's fresh thread and fresh
    connection (issue 17; see llmjobs/web/userload.py).
    """

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        if self.async_mode:
            request.auser = partial(_auser, request)


async def _auser(request: HttpRequest) -> Any:
    return await userload.user_loader.load(request)


class AsyncMessageMiddleware(InlineAsyncMixin, MessageMiddleware):
    """Messages untouched by the view need no storing; stored ones may go to the session (I/O)."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and bool(getattr(storage, "used", True) or getattr(storage, "added_new", True))


class AsyncXFrameOptionsMiddleware(InlineAsyncMixin, XFrameOptionsMiddleware):
    """One response header: no I/O."""


# --- system checks ------------------------------------------------------------------------------

# Django's security checks look for its own dotted paths in MIDDLEWARE. With the subclasses above
# they would warn that the middleware is missing (security.W001-W003, silenced in settings) and
# skip every check that depends on it (HSTS, SSL redirect, CSRF cookie...). This check says
# "missing" only when neither Django's class nor a subclass is listed, and runs Django's
# middleware-dependent security checks as if Django's own paths were listed.
_REQUIRED = {
    "llmjobs.W001": (SecurityMiddleware, "the SECURE_* and HSTS settings have no effect"),
    "llmjobs.W002": (XFrameOptionsMiddleware, "pages are served without an X-Frame-Options header"),
    "llmjobs.W003": (CsrfViewMiddleware, "POST forms are not protected against cross-site request forgery"),
}


def _django_path(cls: type) -> str | None:
    for base in cls.__mro__:
        if base.__module__.startswith("django."):
            return f"{base.__module__}.{base.__qualname__}"
    return None


@register(Tags.security, deploy=True)
def check_async_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    classes = [import_string(path) for path in settings.MIDDLEWARE]
    messages: list[CheckMessage] = [
        Warning(f"No {required.__name__} (or subclass) in MIDDLEWARE: {effect}.", id=check_id)
        for check_id, (required, effect) in _REQUIRED.items()
        if not any(isinstance(c, type) and issubclass(c, required) for c in classes)
    ]
    as_django = [
        (_django_path(c) or path) if isinstance(c, type) and issubclass(c, InlineAsyncMixin) else path
        for path, c in zip(settings.MIDDLEWARE, classes, strict=True)
    ]
    if as_django == list(settings.MIDDLEWARE):
        return messages
    django_checks = [
        check
        for check in registry.get_checks(include_deployment_checks=True)
        if check.__module__.startswith("django.core.checks.security")
    ]
    seen = {repr(m) for check in django_checks for m in check(app_configs=app_configs, databases=None)}
    with override_settings(MIDDLEWARE=as_django):
        for check in django_checks:
            messages += [m for m in check(app_configs=app_configs, databases=None) if repr(m) not in seen]
    return messages
