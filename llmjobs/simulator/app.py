"""The simulator's ASGI application: an Anthropic-compatible Messages API.

A raw ASGI callable (no framework) for speed. It imports no Django and no
anthropic SDK. This module holds the state and the routing; the routes live in
:mod:`.messages` (plain answers, count_tokens), :mod:`.streaming` (SSE),
:mod:`.batches` (Message Batches) and :mod:`.control` (``/_sim/*``):

* ``POST /v1/messages`` (plain and ``stream: true``), ``POST /v1/messages/count_tokens``,
  ``GET /v1/models``, ``GET /v1/models/{id}``, ``/v1/messages/batches...``;
* introspection, outside the Anthropic paths: ``GET /_sim/stats[?brief=1]``,
  ``POST /_sim/reset``, ``GET|POST /_sim/config``, ``GET|POST /_sim/faults``.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .batches import BatchStore, batches
from .buckets import RateLimiter
from .catalog import KNOWN_MODEL_SET, KNOWN_MODELS, lacks_structured_output, model_info
from .config import ConfigError, SimConfig
from .control import control
from .faults import FAULTS, OUTAGE_MODES, fail_outage
from .messages import count_tokens, messages
from .respond import Receive, Scope, Send, send_error, send_json
from .stats import Stats

__all__ = ["FAULTS", "SimulatorApp"]

_PREFIX_CACHE_SIZE = 100_000


class SimulatorApp:
    """The ASGI app and the simulator's state. ``clock`` (monotonic seconds)
    and ``wall`` (epoch seconds) are injectable for tests."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SimConfig()
        self.clock = clock
        self.wall = wall
        #: memoised answers by (prompt key, answer_tokens), oldest first
        self.answers: OrderedDict[tuple[str, int], str] = OrderedDict()
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Clear stats and prompt-cache memory, refill the buckets, drop queued faults."""
        self._new_limiter()
        self._seed()
        self.fault_queue: list[str] = []
        self.prompt_cache: dict[str, float] = {}  # cached prefix key -> clock time it expires
        self.counters = Stats()
        self.batch_store = BatchStore(self.wall)
        self.outage_until = 0.0  # clock time the outage ends
        self.outage_mode = "close"

    def _new_limiter(self) -> None:
        cfg = self.config
        self.limiter = RateLimiter(cfg.rpm, cfg.itpm, cfg.otpm, burst=cfg.burst, clock=self.clock, wall=self.wall)

    def _seed(self) -> None:
        self.fault_rng = random.Random(self.config.seed)
        self.jitter_rng = random.Random(self.config.seed + 1)

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        changed = self.config.update(changes)
        if changed & {"rpm", "itpm", "otpm", "burst"}:
            self._new_limiter()
        if "seed" in changed:
            self._seed()
        if "answer_tokens" in changed:
            self.answers.clear()
        return self.config.as_dict()

    def inject(self, faults: list[str]) -> None:
        self.fault_queue.extend(faults)

    def outage(self, seconds: float, mode: str = "close") -> dict[str, Any]:
        """Fail every API request (not ``/_sim/*``) for ``seconds`` (0 ends an outage)."""
        if mode not in OUTAGE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(OUTAGE_MODES)}")
        if not seconds >= 0 or seconds == float("inf"):
            raise ConfigError("seconds must be a finite number >= 0")
        self.outage_until = self.clock() + seconds if seconds else 0.0
        self.outage_mode = mode
        return self.outage_state()

    def outage_active(self) -> bool:
        return self.outage_until > 0.0 and self.clock() < self.outage_until

    def outage_state(self) -> dict[str, Any]:
        left = max(0.0, self.outage_until - self.clock()) if self.outage_until else 0.0
        return {"active": left > 0, "seconds_left": round(left, 3), "mode": self.outage_mode}

    def stats(self, brief: bool = False) -> dict[str, Any]:
        return self.counters.as_dict(brief, faults_queued=len(self.fault_queue), outage=self.outage_state())

    def ttft(self) -> float:
        """Seconds to the first token: ``ttft`` jittered +/-50% (seeded)."""
        ttft = self.config.ttft
        return ttft * (0.5 + self.jitter_rng.random()) if ttft else 0.0

    def remember_prefix(self, key: str, ttl: float) -> None:
        """A cached prefix was written or read: it lives ``ttl`` seconds from now
        (a read refreshes it; a shorter TTL never shortens a longer one)."""
        cache = self.prompt_cache
        now = self.clock()
        if len(cache) >= _PREFIX_CACHE_SIZE:  # forget expired prefixes now and then
            for old in [k for k, expires in cache.items() if expires <= now]:
                del cache[old]
        cache[key] = max(cache.get(key, 0.0), now + ttl)

    def _model(self, model_id: str) -> dict[str, Any]:
        return model_info(model_id, not lacks_structured_output(model_id, self.config.no_structured_output))

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path != "/v1/messages" and not path.startswith("/_sim/") and self.outage_active():
            await fail_outage(send, receive, self.outage_mode)  # /v1/messages counts it in its stats
        elif path == "/v1/messages":
            if method == "POST":
                await messages(self, scope, receive, send)
            else:
                await send_error(send, 405, "not_found_error", "Method not allowed", [])
        elif path.startswith("/_sim/"):
            await control(self, scope, receive, send, path, method)
        elif path.startswith("/v1/messages/batches"):
            await batches(self, scope, receive, send, path, method)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            await count_tokens(self, scope, receive, send)
        elif path == "/v1/models" and method == "GET":
            data = [self._model(m) for m in KNOWN_MODELS]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
            await send_json(send, 200, page)
        elif path.startswith("/v1/models/") and method == "GET":
            model = path[len("/v1/models/") :]
            if model in KNOWN_MODEL_SET:
                await send_json(send, 200, self._model(model))
            else:
                await send_error(send, 404, "not_found_error", f"model: {model}", [])
        else:
            await send_error(send, 404, "not_found_error", "Not Found", [])
