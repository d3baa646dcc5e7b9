from __future__ import annotations

from collections.abc import Callable
from typing import Any

loads: Callable[[bytes | bytearray | memoryview | str], Any]
try:
    from orjson import loads
except ImportError:  # pragma: no cover
    from json import loads  # type: ignore[assignment]

__all__ = ["loads"]
