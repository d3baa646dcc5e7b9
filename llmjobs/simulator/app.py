"""The simulator's ASGI application: an Anthropic-compatible Messages API.

A raw ASGI callable (no framework) for speed. It imports no Django and no
anthropic SDK. Routes:

* ``POST /v1/messages`` (plain and ``stream: true``), ``POST /v1/messages/count_tokens``,
  ``GET /v1/models``, ``GET /v1/models/{id}``;
* introspection, outside the Anthropic paths: ``GET /_sim/stats[?brief=1]``,
  ``POST /_sim/reset``, ``GET|POST /_sim/config``, ``POST /_sim/faults``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .answers import count_tokens, finish, make_answer
from .batches import Batch, BatchError, BatchStore
from .buckets import Admission, RateLimiter
from .config import ConfigError, SimConfig
from .models import KNOWN_MODEL_SET, KNOWN_MODELS, MAX_OUTPUT_TOKENS, model_info

__all__ = ["FAULTS", "SimulatorApp"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Fault names accepted by /_sim/faults and the ``x-sim-fault`` header.
FAULTS = frozenset({"500", "529", "429", "hang", "drop_stream", "stall_stream"})

_CT_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_REJECTED_PARAMS = ("temperature", "top_p", "top_k")
_CACHE_TTL = 300.0
_ANSWER_CACHE_SIZE = 8192
_EV_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_EV_BLOCK_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_EV_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_EV_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_EV_DROPPED = b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"stream interrupted"}}\n\n'
_DISCONNECTED = 499  # by_status key for requests the client abandoned


class _BadRequest(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class _Prompt:
    """A validated /v1/messages request, with its token accounting."""

    __slots__ = (
        "cache_creation",
        "cache_key",
        "cache_prefix_tokens",
        "cache_read",
        "input_tokens",
        "max_tokens",
        "model",
        "prefill",
        "preview",
        "prompt_key",
        "stop_sequences",
        "stream",
        "system_text",
        "user_text",
    )


class _PromptStat:
    __slots__ = ("paid", "preview", "requests")

    def __init__(self, preview: str) -> None:
        self.requests = 0
        self.paid = 0
        self.preview = preview


def _error_body(kind: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})


def _sse(event: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _block_text(block: Any, where: str) -> str:
    """Text of one content block (non-text blocks count as their JSON)."""
    if not isinstance(block, dict):
        raise _BadRequest(400, "invalid_request_error", f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _BadRequest(400, "invalid_request_error", f"{where}.type: Field required")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _BadRequest(400, "invalid_request_error", f"{where}.text: Field required")
        if not text:
            raise _BadRequest(400, "invalid_request_error", f"{where}: text content blocks must be non-empty")
        return text
    if kind == "tool_result":
        inner = block.get("content")
        if isinstance(inner, str):
            return inner
        if isinstance(inner, list):
            return "".join(_block_text(b, f"{where}.content.{i}") for i, b in enumerate(inner))
        return ""
    return orjson.dumps(block).decode()


class SimulatorApp:
    """The ASGI app. ``clock`` (monotonic seconds) and ``wall`` (epoch
    seconds) are injectable for tests; ``sleep`` likewise."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SimConfig()
        self._clock = clock
        self._wall = wall
        self._answers: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._ids = random.Random()
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Clear stats and prompt-cache memory, refill the buckets, drop queued faults."""
        cfg = self.config
        self.limiter = RateLimiter(cfg.rpm, cfg.itpm, cfg.otpm, burst=cfg.burst, clock=self._clock, wall=self._wall)
        self._fault_rng = random.Random(cfg.seed)
        self._jitter_rng = random.Random(cfg.seed + 1)
        self._fault_queue: list[str] = []
        self._prompt_cache: dict[str, float] = {}
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.stream_errors = 0
        self.tokens = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        self.prompt_stats: dict[str, _PromptStat] = {}
        self.batch_store = BatchStore(self._wall)
        self.batch_stats = {
            "batches": 0, "requests": 0, "succeeded": 0, "errored": 0, "canceled": 0,
            "input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        }  # fmt: skip

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        changed = self.config.update(changes)
        if changed & {"rpm", "itpm", "otpm", "burst"}:
            cfg = self.config
            self.limiter = RateLimiter(cfg.rpm, cfg.itpm, cfg.otpm, burst=cfg.burst, clock=self._clock, wall=self._wall)
        if "seed" in changed:
            self._fault_rng = random.Random(self.config.seed)
            self._jitter_rng = random.Random(self.config.seed + 1)
        if "answer_tokens" in changed:
            self._answers.clear()
        return self.config.as_dict()

    def inject(self, faults: list[str]) -> None:
        self._fault_queue.extend(faults)

    def stats(self, brief: bool = False) -> dict[str, Any]:
        stats = self.prompt_stats.values()
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "stream_errors": self.stream_errors,
            **self.tokens,
            "prompts": {
                "distinct": len(self.prompt_stats),
                "requested_more_than_once": sum(1 for s in stats if s.requests > 1),
                "paid_more_than_once": sum(1 for s in stats if s.paid > 1),
                "extra_paid_calls": sum(s.paid - 1 for s in stats if s.paid > 1),
            },
            "faults_queued": len(self._fault_queue),
            "batch": dict(self.batch_stats),
        }
        if not brief:
            out["prompt_counts"] = {
                key: {"requests": s.requests, "paid": s.paid, "preview": s.preview}
                for key, s in self.prompt_stats.items()
            }
        return out

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        path = scope["path"]
        method = scope["method"]
        if path == "/v1/messages":
            if method == "POST":
                await self._messages(scope, receive, send)
            else:
                await self._error(send, 405, "not_found_error", "Method not allowed", [])
        elif path.startswith("/_sim/"):
            await self._admin(scope, receive, send, path, method)
        elif path.startswith("/v1/messages/batches"):
            await self._batches(scope, receive, send, path, method)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            await self._count_tokens(scope, receive, send)
        elif path == "/v1/models" and method == "GET":
            data = [model_info(m) for m in KNOWN_MODELS]
            await self._json(
                send, 200, {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
            )
        elif path.startswith("/v1/models/") and method == "GET":
            model = path[len("/v1/models/") :]
            if model in KNOWN_MODEL_SET:
                await self._json(send, 200, model_info(model))
            else:
                await self._error(send, 404, "not_found_error", f"model: {model}", [])
        else:
            await self._error(send, 404, "not_found_error", "Not Found", [])

    # ------------------------------------------------------------------ responses
    def _request_id(self) -> str:
        return "req_011C%020x" % self._ids.getrandbits(80)

    async def _json(
        self, send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = orjson.dumps(payload)
        headers = [_CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", self._request_id().encode())]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(
        self, send: Send, status: int, kind: str, message: str, extra: list[tuple[bytes, bytes]], request_id: str = ""
    ) -> int:
        request_id = request_id or self._request_id()
        body = _error_body(kind, message, request_id)
        headers = [_CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", request_id.encode())]
        if status in (500, 529):
            headers.append((b"x-should-retry", b"true"))
        headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _read_body(self, receive: Receive, limit: int) -> bytes | None:
        """The whole request body, or None if it exceeds ``limit`` bytes."""
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body if len(body) <= limit else None
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ admin
    async def _admin(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        try:
            if path == "/_sim/stats" and method == "GET":
                query = scope.get("query_string", b"")
                brief = b"brief=1" in query or b"brief=true" in query
                await self._json(send, 200, self.stats(brief=brief))
            elif path == "/_sim/reset" and method == "POST":
                await self._read_body(receive, 1 << 20)
                self.reset()
                await self._json(send, 200, {"ok": True})
            elif path == "/_sim/config" and method == "GET":
                await self._json(send, 200, self.config.as_dict())
            elif path == "/_sim/config" and method == "POST":
                payload = orjson.loads(await self._read_body(receive, 1 << 20) or b"{}")
                if not isinstance(payload, dict):
                    raise ConfigError("expected a JSON object")
                await self._json(send, 200, self.configure(payload))
            elif path == "/_sim/faults" and method == "POST":
                payload = orjson.loads(await self._read_body(receive, 1 << 20) or b"{}")
                faults = payload.get("faults") if isinstance(payload, dict) else None
                if not isinstance(faults, list) or not all(isinstance(f, str) and f in FAULTS for f in faults):
                    raise ConfigError(f"faults must be a list of {sorted(FAULTS)}")
                self.inject(faults)
                await self._json(send, 200, {"queued": len(self._fault_queue)})
            elif path == "/_sim/faults" and method == "GET":
                await self._json(send, 200, {"faults": list(self._fault_queue)})
            else:
                await self._error(send, 404, "not_found_error", "Not Found", [])
        except (ConfigError, orjson.JSONDecodeError) as exc:
            await self._error(send, 400, "invalid_request_error", str(exc), [])

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(receive, self.config.max_body)
        if body is None:
            await self._error(
                send, 413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", []
            )
            return
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                raise _BadRequest(400, "invalid_request_error", "Request body must be a JSON object")
            payload.setdefault("max_tokens", 1)
            prompt = self._validate(payload)
        except orjson.JSONDecodeError:
            await self._error(send, 400, "invalid_request_error", "There was an error parsing the body as JSON", [])
            return
        except _BadRequest as exc:
            await self._error(send, exc.status, exc.kind, exc.message, [])
            return
        total = prompt.input_tokens + prompt.cache_creation + prompt.cache_read
        await self._json(send, 200, {"input_tokens": total})

    # ------------------------------------------------------------------ validation
    def _validate(self, payload: dict[str, Any]) -> _Prompt:
        def bad(message: str) -> _BadRequest:
            return _BadRequest(400, "invalid_request_error", message)

        for name in _REJECTED_PARAMS:
            if name in payload:
                raise bad(f"{name}: This parameter is not supported by the current API version.")
        model = payload.get("model")
        if model is None:
            raise bad("model: Field required")
        if not isinstance(model, str) or not model:
            raise bad("model: Input should be a valid string")
        max_tokens = payload.get("max_tokens")
        if max_tokens is None:
            raise bad("max_tokens: Field required")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise bad("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise bad("max_tokens: Input should be greater than or equal to 1")
        messages = payload.get("messages")
        if messages is None:
            raise bad("messages: Field required")
        if not isinstance(messages, list):
            raise bad("messages: Input should be a valid list")
        if not messages:
            raise bad("messages: at least one message is required")
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise bad("stream: Input should be a valid boolean")
        stops = payload.get("stop_sequences")
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
            raise bad("stop_sequences: Input should be a valid list of strings")

        # System prompt and cache breakpoints.
        system = payload.get("system")
        pieces: list[str] = []
        prefix_chars = -1  # chars up to and including the last cache_control block
        total_chars = 0
        if system is None:
            system_text = ""
        elif isinstance(system, str):
            system_text = system
            total_chars = len(system)
        elif isinstance(system, list):
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise bad(f"system.{i}: Input should be a valid text block")
                text = _block_text(block, f"system.{i}")
                pieces.append(text)
                total_chars += len(text)
                if block.get("cache_control") is not None:
                    prefix_chars = total_chars
            system_text = "\n".join(pieces)
        else:
            raise bad("system: Input should be a valid string or list of text blocks")

        # Messages: roles alternate, the first is "user", content non-empty.
        user_text = ""
        prefill = ""
        previous_role = None
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise bad(f"messages.{i}: Input should be a valid dictionary")
            role = message.get("role")
            if role not in ("user", "assistant"):
                if role is None:
                    raise bad(f"messages.{i}.role: Field required")
                raise bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise bad('messages: first message must use the "user" role')
            if role == previous_role:
                raise bad(
                    'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{role}" roles in a row'
                )
            previous_role = role
            content = message.get("content")
            final_assistant = i == last and role == "assistant"
            if isinstance(content, str):
                if not content and not final_assistant:
                    raise bad(
                        f"messages.{i}: all messages must have non-empty content "
                        "except for the optional final assistant message"
                    )
                text = content
                total_chars += len(text)
            elif isinstance(content, list):
                if not content and not final_assistant:
                    raise bad(
                        f"messages.{i}: all messages must have non-empty content "
                        "except for the optional final assistant message"
                    )
                texts = []
                for j, block in enumerate(content):
                    block_text = _block_text(block, f"messages.{i}.content.{j}")
                    texts.append(block_text)
                    total_chars += len(block_text)
                    if block.get("cache_control") is not None:
                        prefix_chars = total_chars
                text = "".join(texts)
            elif content is None:
                raise bad(f"messages.{i}.content: Field required")
            else:
                raise bad(f"messages.{i}.content: Input should be a valid string or list of content blocks")
            if role == "user":
                user_text = text
            elif final_assistant:
                prefill = text
        if model not in KNOWN_MODEL_SET:
            raise _BadRequest(404, "not_found_error", f"model: {model}")
        if max_tokens > MAX_OUTPUT_TOKENS:
            raise bad(
                f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed number "
                f"of output tokens for {model}"
            )

        prompt = _Prompt()
        prompt.model = model
        prompt.max_tokens = max_tokens
        prompt.stream = stream
        prompt.stop_sequences = stops
        prompt.system_text = system_text
        prompt.user_text = user_text
        prompt.prefill = prefill
        canonical = orjson.dumps([model, system, messages], option=orjson.OPT_SORT_KEYS)
        prompt.prompt_key = hashlib.sha1(canonical).hexdigest()[:16]
        prompt.preview = (user_text or system_text)[:40]
        total_tokens = (total_chars + 3) // 4
        prompt.cache_creation = prompt.cache_read = 0
        prompt.cache_key = None
        prompt.cache_prefix_tokens = 0
        if prefix_chars > 0:
            prefix_tokens = (prefix_chars + 3) // 4
            prompt.cache_prefix_tokens = prefix_tokens
            # The cached prefix is everything up to the breakpoint: identify it by
            # model + the canonical JSON of the request truncated at that point.
            prompt.cache_key = self._prefix_key(model, system, messages, prefix_chars)
            seen = self._prompt_cache.get(prompt.cache_key)
            if seen is not None and self._clock() - seen < _CACHE_TTL:
                prompt.cache_read = prefix_tokens
            else:
                prompt.cache_creation = prefix_tokens
            total_tokens -= prefix_tokens
        prompt.input_tokens = max(0, total_tokens)
        return prompt

    @staticmethod
    def _prefix_key(model: str, system: Any, messages: list[Any], prefix_chars: int) -> str:
        """Identity of the cached prefix: model + every block up to the last
        block that carries ``cache_control``."""
        parts: list[bytes] = [model.encode()]
        last = 0
        if isinstance(system, list):
            for block in system:
                parts.append(orjson.dumps(block, option=orjson.OPT_SORT_KEYS))
                if block.get("cache_control") is not None:
                    last = len(parts)
        elif isinstance(system, str):
            parts.append(system.encode())
        for message in messages:
            content = message["content"]
            role = message["role"].encode() + b":"
            if isinstance(content, str):
                parts.append(role + content.encode())
                continue
            for block in content:
                parts.append(role + orjson.dumps(block, option=orjson.OPT_SORT_KEYS))
                if block.get("cache_control") is not None:
                    last = len(parts)
        return hashlib.sha1(b"\x1e".join(parts[:last]) + b"%d" % prefix_chars).hexdigest()

    # ------------------------------------------------------------------ /v1/messages/batches
    def _auth_error(self, scope: Scope) -> tuple[int, str, str] | None:
        api_key = version = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                api_key = value[7:].strip()
            elif name == b"x-api-key":
                api_key = value
            elif name == b"anthropic-version":
                version = value
        if not api_key:
            return 401, "authentication_error", "x-api-key header is required"
        if self.config.api_key is not None and api_key.decode("latin-1") != self.config.api_key:
            return 401, "authentication_error", "invalid x-api-key"
        if not version:
            return 400, "invalid_request_error", "anthropic-version: header is required"
        return None

    @staticmethod
    def _base_url(scope: Scope) -> str:
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if host is None:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}"

    async def _batches(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        store = self.batch_store
        try:
            problem = self._auth_error(scope)
            if problem is not None:
                raise BatchError(*problem)
            now = self._wall()
            base = self._base_url(scope)
            parts = path[len("/v1/messages/batches") :].strip("/").split("/")
            if parts == [""]:
                if method == "POST":
                    body = await self._read_body(receive, max(self.config.max_body, 256 * 1024 * 1024))
                    if body is None:
                        raise BatchError(
                            413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
                        )
                    try:
                        payload = orjson.loads(body)
                    except orjson.JSONDecodeError:
                        raise BatchError(
                            400, "invalid_request_error", "There was an error parsing the body as JSON"
                        ) from None
                    batch = self._create_batch(store.validate(payload))
                    await self._json(send, 200, batch.as_dict(now, base))
                elif method == "GET":
                    query = dict(
                        pair.split("=", 1) for pair in scope.get("query_string", b"").decode().split("&") if "=" in pair
                    )
                    limit = max(1, min(1000, int(query.get("limit", "20") or 20)))
                    page, has_more = store.page(limit, query.get("before_id"), query.get("after_id"))
                    data = [b.as_dict(now, base) for b in page]
                    await self._json(
                        send,
                        200,
                        {
                            "data": data,
                            "has_more": has_more,
                            "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None,
                        },
                    )
                else:
                    raise BatchError(405, "invalid_request_error", "Method not allowed")
            elif len(parts) == 1 and method == "GET":
                await self._json(send, 200, store.get(parts[0]).as_dict(now, base))
            elif len(parts) == 1 and method == "DELETE":
                await self._json(send, 200, store.delete(parts[0]))
            elif len(parts) == 2 and parts[1] == "cancel" and method == "POST":
                await self._json(send, 200, store.cancel(parts[0]).as_dict(now, base))
            elif len(parts) == 2 and parts[1] == "results" and method == "GET":
                batch = store.get(parts[0])
                if batch.status(now) != "ended":
                    raise BatchError(
                        404, "not_found_error", f"No results available for message batch {batch.id}: still in progress."
                    )
                body = b"".join(orjson.dumps(item) + b"\n" for item in batch.results)
                headers = [
                    (b"content-type", b"application/x-jsonl"),
                    (b"content-length", b"%d" % len(body)),
                    (b"request-id", self._request_id().encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            else:
                raise BatchError(404, "not_found_error", "Not Found")
        except BatchError as exc:
            await self._error(send, exc.status, exc.kind, exc.message, [])

    def _create_batch(self, requests: list[dict[str, Any]]) -> Batch:
        """Compute every result now (answers are deterministic); bill when the batch ends."""
        cfg = self.config
        results: list[dict[str, Any]] = []
        bills: list[tuple[_Prompt, _PromptStat, int]] = []
        for request in requests:
            params = request["params"]
            request_id = self._request_id()
            try:
                prompt = self._validate(params)
            except _BadRequest as exc:
                results.append(_errored(exc.kind, exc.message, request_id))
                continue
            stat = self.prompt_stats.get(prompt.prompt_key)
            if stat is None:
                stat = self.prompt_stats[prompt.prompt_key] = _PromptStat(prompt.preview)
            stat.requests += 1
            if cfg.fail_529 or cfg.fail_500:
                draw = self._fault_rng.random()
                if draw < cfg.fail_529:
                    results.append(_errored("overloaded_error", "Overloaded", request_id))
                    continue
                if draw < cfg.fail_529 + cfg.fail_500:
                    results.append(_errored("api_error", "Internal server error", request_id))
                    continue
            text = make_answer(prompt.system_text, prompt.user_text, prompt.prefill, cfg.answer_tokens)
            text, stop_reason, stop_sequence, output_tokens = finish(text, prompt.max_tokens, prompt.stop_sequences)
            message = _message(request_id, prompt, text, stop_reason, stop_sequence, output_tokens, "batch")
            results.append({"type": "succeeded", "message": message})
            bills.append((prompt, stat, output_tokens))
        items = [{"custom_id": r["custom_id"], "result": res} for r, res in zip(requests, results)]
        batch = self.batch_store.add(items, cfg.batch_seconds)
        self.batch_stats["batches"] += 1
        self.batch_stats["requests"] += len(items)

        def on_end(ended: Batch) -> None:
            stats = self.batch_stats
            for item in ended.results:
                kind = item["result"]["type"]
                stats[kind] = stats.get(kind, 0) + 1
            if ended.cancel_at is not None:
                return
            for prompt, stat, output_tokens in bills:
                stat.paid += 1
                stats["input_tokens"] += prompt.input_tokens
                stats["output_tokens"] += output_tokens
                stats["cache_creation_input_tokens"] += prompt.cache_creation
                stats["cache_read_input_tokens"] += prompt.cache_read

        batch.on_end = on_end
        batch.status(self._wall())  # batch_seconds=0: ends (and bills) at once
        return batch

    # ------------------------------------------------------------------ /v1/messages
    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        status = 500
        try:
            status = await self._handle(scope, receive, send)
        finally:
            self.in_flight -= 1
            by_status = self.by_status
            by_status[status] = by_status.get(status, 0) + 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        cfg = self.config
        limiter = self.limiter
        api_key = version = fault = None
        content_length = -1
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    api_key = value[7:].strip()
            elif name == b"x-api-key":
                api_key = value
            elif name == b"anthropic-version":
                version = value
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = -1
            elif name == b"x-sim-fault":
                fault = value.decode("latin-1").strip() or None
        if fault is None and self._fault_queue:
            fault = self._fault_queue.pop(0)

        if content_length > cfg.max_body:
            return await self._error(
                send,
                413,
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
                limiter.headers(),
            )
        if not api_key:
            return await self._error(
                send, 401, "authentication_error", "x-api-key header is required", limiter.headers()
            )
        if cfg.api_key is not None and api_key.decode("latin-1") != cfg.api_key:
            return await self._error(send, 401, "authentication_error", "invalid x-api-key", limiter.headers())
        if not version:
            return await self._error(
                send, 400, "invalid_request_error", "anthropic-version: header is required", limiter.headers()
            )
        if cfg.capacity and self.in_flight > cfg.capacity:
            return await self._error(send, 529, "overloaded_error", "Overloaded", limiter.headers())

        body = await self._read_body(receive, cfg.max_body)
        if body is None:
            return await self._error(
                send,
                413,
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
                limiter.headers(),
            )
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                raise _BadRequest(400, "invalid_request_error", "Input should be a valid dictionary")
            prompt = self._validate(payload)
        except orjson.JSONDecodeError:
            return await self._error(
                send, 400, "invalid_request_error", "There was an error parsing the body as JSON", limiter.headers()
            )
        except _BadRequest as exc:
            return await self._error(send, exc.status, exc.kind, exc.message, limiter.headers())

        stat = self.prompt_stats.get(prompt.prompt_key)
        if stat is None:
            stat = self.prompt_stats[prompt.prompt_key] = _PromptStat(prompt.preview)
        stat.requests += 1

        # Injected faults that happen before admission.
        if fault == "529":
            return await self._error(send, 529, "overloaded_error", "Overloaded", limiter.headers())
        if fault == "429":
            headers = limiter.headers()
            headers.append((b"retry-after", b"1"))
            return await self._error(
                send, 429, "rate_limit_error", "This request would exceed your organization's rate limit.", headers
            )

        # Rate limits: RPM, ITPM (uncached input), OTPM (reserve max_tokens).
        uncached = prompt.input_tokens + prompt.cache_creation
        admission = limiter.admit(uncached, prompt.max_tokens) if limiter._active else _ADMITTED
        if not admission.ok:
            headers = limiter.headers()
            headers.append((b"retry-after", b"%d" % admission.retry_after_header))
            return await self._error(send, 429, "rate_limit_error", self._rate_message(admission), headers)
        # remaining_at="admission": the headers every answer to this request carries, taken now.
        snapshot = limiter.headers() if cfg.remaining_at == "admission" and limiter._active else None

        # Random faults after admission (one draw per request, seeded).
        if fault is None and (cfg.fail_529 or cfg.fail_500 or cfg.hang or (prompt.stream and cfg.drop_stream)):
            draw = self._fault_rng.random()
            edge = cfg.fail_529
            if draw < edge:
                fault = "529"
            elif draw < (edge := edge + cfg.fail_500):
                fault = "500"
            elif draw < (edge := edge + cfg.hang):
                fault = "hang"
            elif prompt.stream and draw < edge + cfg.drop_stream:
                fault = "drop_stream"
        if fault == "529":
            headers = _settle(limiter, admission, 0, snapshot, cfg.remaining_at)
            return await self._error(send, 529, "overloaded_error", "Overloaded", headers)

        if prompt.cache_key is not None:
            cache = self._prompt_cache
            now = self._clock()
            if len(cache) >= 100_000:  # forget expired prefixes now and then
                for key in [k for k, seen in cache.items() if now - seen >= _CACHE_TTL]:
                    del cache[key]
            cache[prompt.cache_key] = now

        if fault == "500" or (fault == "drop_stream" and not prompt.stream):
            if cfg.ttft and await self._wait_or_disconnect(receive, self._ttft()):
                limiter.settle(admission.output_reserved, 0)
                return _DISCONNECTED
            headers = _settle(limiter, admission, 0, snapshot, cfg.remaining_at)
            return await self._error(send, 500, "api_error", "Internal server error", headers)
        if fault in ("hang", "stall_stream") and not prompt.stream:
            await self._wait_or_disconnect(receive, None)
            limiter.settle(admission.output_reserved, 0)
            return _DISCONNECTED

        key = (prompt.prompt_key, cfg.answer_tokens)
        answers = self._answers
        text = answers.get(key)
        if text is None:
            text = make_answer(prompt.system_text, prompt.user_text, prompt.prefill, cfg.answer_tokens)
            answers[key] = text
            if len(answers) > _ANSWER_CACHE_SIZE:
                answers.popitem(last=False)
        text, stop_reason, stop_sequence, output_tokens = finish(text, prompt.max_tokens, prompt.stop_sequences)

        if prompt.stream:
            return await self._stream(
                send, receive, prompt, stat, admission, text, stop_reason, stop_sequence, output_tokens, fault, snapshot
            )

        if cfg.ttft or cfg.tps:
            delay = self._ttft() + (output_tokens / cfg.tps if cfg.tps else 0.0)
            if await self._wait_or_disconnect(receive, delay):
                limiter.settle(admission.output_reserved, 0)
                return _DISCONNECTED
        limit_headers = _settle(limiter, admission, output_tokens, snapshot, cfg.remaining_at)
        self._bill(prompt, stat, output_tokens)
        request_id = self._request_id()
        body = orjson.dumps(_message(request_id, prompt, text, stop_reason, stop_sequence, output_tokens, "standard"))
        headers = [_CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", request_id.encode())]
        headers.extend(limit_headers)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return 200

    def _bill(self, prompt: _Prompt, stat: _PromptStat, output_tokens: int) -> None:
        stat.paid += 1
        tokens = self.tokens
        tokens["input_tokens"] += prompt.input_tokens
        tokens["output_tokens"] += output_tokens
        tokens["cache_creation_input_tokens"] += prompt.cache_creation
        tokens["cache_read_input_tokens"] += prompt.cache_read

    def _rate_message(self, admission: Admission) -> str:
        cfg = self.config
        what = {
            "requests": f"{cfg.rpm} requests per minute",
            "input_tokens": f"{cfg.itpm} input tokens per minute",
            "output_tokens": f"{cfg.otpm} output tokens per minute",
        }[admission.limited_by]
        return (
            f"This request would exceed the rate limit for your organization of {what}. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits. "
            "You can see the response headers for current usage. Please reduce the prompt length "
            "or the maximum tokens requested, or try again later."
        )

    def _ttft(self) -> float:
        ttft = self.config.ttft
        return ttft * (0.5 + self._jitter_rng.random()) if ttft else 0.0

    @staticmethod
    async def _wait_or_disconnect(receive: Receive, timeout: float | None) -> bool:
        """Sleep ``timeout`` seconds (forever if None); True if the client left."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ streaming
    async def _stream(
        self,
        send: Send,
        receive: Receive,
        prompt: _Prompt,
        stat: _PromptStat,
        admission: Admission,
        text: str,
        stop_reason: str,
        stop_sequence: str | None,
        output_tokens: int,
        fault: str | None,
        snapshot: list[tuple[bytes, bytes]] | None,
    ) -> int:
        cfg = self.config
        limiter = self.limiter
        request_id = self._request_id()
        usage = {
            "input_tokens": prompt.input_tokens,
            "cache_creation_input_tokens": prompt.cache_creation,
            "cache_read_input_tokens": prompt.cache_read,
        }
        start = _sse(
            b"message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01" + request_id[8:],
                    "type": "message",
                    "role": "assistant",
                    "model": prompt.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1, "service_tier": "standard"},
                },
            },
        )
        headers = [*_SSE_HEADERS, (b"request-id", request_id.encode())]
        # The headers go out before the answer is produced, so under every
        # remaining_at convention they report this call's reservation held.
        if snapshot is not None:
            headers.extend(snapshot)
        elif limiter._active:
            headers.extend(limiter.headers())
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = start + _EV_BLOCK_START + _EV_PING
        stall = fault in ("stall_stream", "hang")
        paced = bool(cfg.ttft or cfg.tps) or stall

        if not paced and fault is None:
            # Instant: the whole stream in one write.
            chunks = [head]
            for piece in _split(text, 48):
                chunks.append(_delta(piece))
            chunks.append(_EV_BLOCK_STOP)
            chunks.append(_message_delta(stop_reason, stop_sequence, usage, output_tokens))
            chunks.append(_EV_MESSAGE_STOP)
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            limiter.settle(admission.output_reserved, output_tokens)
            self._bill(prompt, stat, output_tokens)
            return 200

        loop = asyncio.get_running_loop()
        disconnect = asyncio.ensure_future(_until_disconnect(receive))
        ping_every = cfg.ping_interval
        sent_chars = 0
        try:
            await send({"type": "http.response.body", "body": head, "more_body": True})

            async def pause(until: float) -> bool:
                """Wait until loop time ``until`` sending pings; False if the client left."""
                while True:
                    now = loop.time()
                    if disconnect.done():
                        return False
                    if until <= now:
                        return True
                    step = min(until - now, ping_every)
                    await asyncio.wait((disconnect,), timeout=step)
                    if disconnect.done():
                        return False
                    if loop.time() < until - 1e-3:
                        await send({"type": "http.response.body", "body": _EV_PING, "more_body": True})

            if stall:
                await pause(float("inf"))
                return _DISCONNECTED

            t0 = loop.time() + self._ttft()
            if not await pause(t0):
                return _DISCONNECTED
            tps = cfg.tps
            chunk_chars = min(256, max(4, int(tps * 0.1))) if tps else 48  # ~40 deltas/s at most
            pieces = _split(text, chunk_chars)
            if fault == "drop_stream" and len(pieces) == 1 and len(text) > 1:
                pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
            drop_after = max(1, len(pieces) // 2) if fault == "drop_stream" else -1
            for index, piece in enumerate(pieces):
                if index == drop_after:
                    break
                sent_chars += len(piece)
                if tps and not await pause(t0 + count_tokens(text[:sent_chars]) / tps):
                    sent_chars -= len(piece)
                    return _DISCONNECTED
                await send({"type": "http.response.body", "body": _delta(piece), "more_body": True})
            if fault == "drop_stream":
                self.stream_errors += 1
                await send({"type": "http.response.body", "body": _EV_DROPPED, "more_body": False})
                return 200
            tail = _EV_BLOCK_STOP + _message_delta(stop_reason, stop_sequence, usage, output_tokens) + _EV_MESSAGE_STOP
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            sent_chars = -1
            return 200
        finally:
            disconnect.cancel()
            if sent_chars == -1:
                limiter.settle(admission.output_reserved, output_tokens)
                self._bill(prompt, stat, output_tokens)
            elif sent_chars > 0:  # dropped or abandoned after content: billed for what was sent
                billed = count_tokens(text[:sent_chars])
                limiter.settle(admission.output_reserved, billed)
                self._bill(prompt, stat, billed)
            else:
                limiter.settle(admission.output_reserved, 0)


_ADMITTED = Admission(True)


def _settle(
    limiter: RateLimiter, admission: Admission, actual: int, snapshot: list[tuple[bytes, bytes]] | None, at: str
) -> list[tuple[bytes, bytes]]:
    """Correct the call's output reservation to ``actual`` and return the
    rate-limit headers of its answer, computed per ``remaining_at``: the
    admission ``snapshot``, before the refund (``answer``) or after it (``refund``)."""
    if snapshot is not None:
        limiter.settle(admission.output_reserved, actual)
        return snapshot
    if at == "answer":
        headers = limiter.headers()
        limiter.settle(admission.output_reserved, actual)
        return headers
    limiter.settle(admission.output_reserved, actual)
    return limiter.headers()


def _message(
    request_id: str,
    prompt: _Prompt,
    text: str,
    stop_reason: str,
    stop_sequence: str | None,
    output_tokens: int,
    service_tier: str,
) -> dict[str, Any]:
    """A complete Message object, as a plain answer or a batch result carries it."""
    return {
        "id": "msg_01" + request_id[8:],
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt.input_tokens,
            "cache_creation_input_tokens": prompt.cache_creation,
            "cache_read_input_tokens": prompt.cache_read,
            "output_tokens": output_tokens,
            "service_tier": service_tier,
        },
    }


def _errored(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id},
    }


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _split(text: str, chunk_chars: int) -> list[str]:
    """Split ``text`` into pieces of about ``chunk_chars`` at word boundaries;
    the pieces concatenate back to ``text`` exactly."""
    if len(text) <= chunk_chars:
        return [text] if text else []
    pieces: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        end = start + chunk_chars
        if end >= n:
            pieces.append(text[start:])
            break
        space = text.find(" ", end)
        if space < 0 or space - start > chunk_chars * 3:
            space = end
        pieces.append(text[start:space])
        start = space
    return pieces


def _delta(piece: str) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
        + orjson.dumps(piece)
        + b"}}\n\n"
    )


def _message_delta(stop_reason: str, stop_sequence: str | None, usage: dict[str, int], output_tokens: int) -> bytes:
    return _sse(
        b"message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {**usage, "output_tokens": output_tokens},
        },
    )
