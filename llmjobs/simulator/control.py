"""Introspection and control, outside the Anthropic paths (no auth):
``GET /_sim/stats[?brief=1]``, ``POST /_sim/reset``, ``GET|POST /_sim/config``,
``GET|POST /_sim/faults``, ``GET|POST /_sim/outage?seconds=N[&mode=close|503|529]``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .config import ConfigError
from .faults import FAULTS
from .respond import Receive, Scope, Send, read_body, send_error, send_json
from .respond import query as parse_query

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = ["control"]

_MAX_BODY = 1 << 20


async def _json_body(receive: Receive) -> Any:
    return orjson.loads(await read_body(receive, _MAX_BODY) or b"{}")


async def control(app: SimulatorApp, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
    try:
        if path == "/_sim/stats" and method == "GET":
            query = scope.get("query_string", b"")
            brief = b"brief=1" in query or b"brief=true" in query
            await send_json(send, 200, app.stats(brief=brief))
        elif path == "/_sim/reset" and method == "POST":
            await read_body(receive, _MAX_BODY)
            app.reset()
            await send_json(send, 200, {"ok": True})
        elif path == "/_sim/config" and method == "GET":
            await send_json(send, 200, app.config.as_dict())
        elif path == "/_sim/config" and method == "POST":
            payload = await _json_body(receive)
            if not isinstance(payload, dict):
                raise ConfigError("expected a JSON object")
            await send_json(send, 200, app.configure(payload))
        elif path == "/_sim/faults" and method == "POST":
            payload = await _json_body(receive)
            faults = payload.get("faults") if isinstance(payload, dict) else None
            if not isinstance(faults, list) or not all(isinstance(f, str) and f in FAULTS for f in faults):
                raise ConfigError(f"faults must be a list of {sorted(FAULTS)}")
            app.inject(faults)
            await send_json(send, 200, {"queued": len(app.fault_queue)})
        elif path == "/_sim/outage" and method == "POST":
            await read_body(receive, _MAX_BODY)
            query = parse_query(scope)
            try:
                seconds = float(query.get("seconds", "0"))
            except ValueError:
                raise ConfigError("seconds must be a number") from None
            await send_json(send, 200, app.outage(seconds, query.get("mode", "close")))
        elif path == "/_sim/outage" and method == "GET":
            await send_json(send, 200, app.outage_state())
        elif path == "/_sim/faults" and method == "GET":
            await send_json(send, 200, {"faults": list(app.fault_queue)})
        else:
            await send_error(send, 404, "not_found_error", "Not Found", [])
    except (ConfigError, orjson.JSONDecodeError) as exc:
        await send_error(send, 400, "invalid_request_error", str(exc), [])
