"""ASGI entry point: the app is served by uvicorn (`manage.py serve`)."""

import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does, then its handler:

from llmjobs.web.handler import InlineSignalsASGIHandler  # noqa: E402  (after Django is set up)

# Django's ASGIHandler without its two thread hops per stream (llmjobs/web/handler.py).
django_application = InlineSignalsASGIHandler()


def _with_static_files(app: Any) -> Any:
    # uvicorn does not serve static files; in the embedded single-machine mode
    # Django's own ASGI static handler serves the admin's CSS/JS from the apps.
    from django.conf import settings
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    if settings.DEBUG or os.environ.get("LLMJOBS_SERVE_STATIC", "1") == "1":
        return ASGIStaticFilesHandler(app)
    return app


from llmjobs.web.playground import with_lifespan  # noqa: E402  (after Django is set up)

# Lifespan: server shutdown closes the playground's shared AsyncAnthropic client.
application = with_lifespan(_with_static_files(django_application))
