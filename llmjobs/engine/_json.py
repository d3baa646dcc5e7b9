from __future__ import annotations

try:
    from orjson import loads
except ImportError:  # pragma: no cover
    from json import loads

__all__ = ["loads"]
