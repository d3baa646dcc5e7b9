"""The REST API (``/api/v1/``): django-ninja, async views, OpenAPI from the type hints."""

from .views import api

__all__ = ["api"]
