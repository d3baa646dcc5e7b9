"""The engine: run a stream of calls through one client, paced by the governor."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Hashable, Iterable
from typing import Any

from ._job import Job, Latency, attempt_timeout
from ._types import CANCELLED, FAILED, SUCCEEDED, Call, EngineConfig, Outcome, RunAborted
from .advice import max_tokens_advice
from .attempts import messages_url, plain_attempt, stream_attempt
from .breaker import CircuitBreaker
from .client import make_client
from .governor import Governor, Ticket
from .heap import settle_heap
from .pacing import PassBudget
from .results import CANCELLING, RUNNING, AttemptResults
from .retry import RetryPolicy, Verdict, classify
from .stats import EngineStats

_log = logging.getLogger("llmjobs.engine")

__all__ = ["Engine"]


class Engine:
    """Runs calls concurrently through one ``AsyncAnthropic``, paced by a :class:`Governor`.

    ``async with Engine() as engine: async for outcome in engine.run(calls): ...``.
    The engine makes (and closes) its own client when none is given; it never
    closes a caller's client. The governor, and what it learned about the
    account, is kept across runs.
    """

    def __init__(
        self,
        *,
        client: Any = None,
        config: EngineConfig | None = None,
        governor: Governor | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: str = "aiohttp",
    ) -> None:
        self.config = config = config or EngineConfig()
        self._client = client
        self._own_client = False
        self._api_key = api_key
        self._base_url = base_url
        self._transport = transport
        self.governor = governor or Governor(
            rpm=config.rpm,
            itpm=config.itpm,
            otpm=config.otpm,
            max_concurrency=config.max_concurrency,
            initial_concurrency=config.initial_concurrency,
            pause_base=config.pause_base,
            pause_max=config.pause_max,
            learn=config.learn_limits,
            warmup=config.warmup,
            first_wave=config.first_wave,
        )
        self.policy = RetryPolicy(
            max_attempts=config.max_attempts,
            base=config.backoff_base,
            cap=config.backoff_max,
            deadline=config.item_deadline,
        )
        self.stats = EngineStats(self.governor)
        self.breaker = CircuitBreaker(now=self.governor.now())
        self._latency = Latency()
        self._runs: set[_Run] = set()

    @property
    def client(self) -> Any:
        return self._client

    async def __aenter__(self) -> Engine:
        if self._client is None:
            self._client = make_client(api_key=self._api_key, base_url=self._base_url, transport=self._transport)  # type: ignore[arg-type]
            self._own_client = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if the engine made it."""
        if self._own_client and self._client is not None:
            client, self._client, self._own_client = self._client, None, False
            await client.close()

    def max_tokens_advice(self, max_tokens: int) -> str | None:
        """A hint for the user when ``max_tokens`` far above the answers seen held the run back
        (e.g. "answers average 52 tokens; max_tokens 256 would run about 3x faster"), else None."""
        gov = self.governor
        return max_tokens_advice(
            gov.observed_outputs(),
            max_tokens,
            gov.binding,
            capacity=gov.output_tokens.capacity or None,
            rate=gov.output_tokens.rate,
            latency=self._latency.mean,
        )

    def cancel(self) -> None:
        """Stop dispatching and cancel in-flight calls; each is reported ``cancelled``."""
        for r in list(self._runs):
            r.cancel()

    def drain(self, timeout: float) -> None:
        """Stop dispatching; let in-flight calls finish and report (for up to ``timeout``
        seconds, then they are cancelled). Calls not in flight are reported ``cancelled``."""
        for r in list(self._runs):
            r.drain(timeout)

    async def run(self, calls: Iterable[Call] | AsyncIterable[Call]) -> AsyncIterator[Outcome]:
        """Yield an :class:`Outcome` for every call taken from ``calls``, as they complete.

        ``calls`` is pulled lazily. Raises :class:`RunAborted` on 401/403. If the
        consumer stops early or is cancelled, in-flight calls are cancelled.
        """
        async with self._client_scope():
            r = _Run(self, calls)
            async for _index, outcome in r.outcomes():
                yield outcome

    async def run_ordered(self, calls: Iterable[Call] | AsyncIterable[Call]) -> list[Outcome]:
        """All outcomes in input order (like ``asyncio.gather``)."""
        results: dict[int, Outcome] = {}
        async with self._client_scope():
            r = _Run(self, calls)
            async for index, outcome in r.outcomes():
                results[index] = outcome
        return [results[i] for i in range(len(results))]

    @contextlib.asynccontextmanager
    async def _client_scope(self) -> AsyncIterator[None]:
        if self._client is not None:
            yield
            return
        await self.__aenter__()
        try:
            yield
        finally:
            await self.aclose()


class _Run(AttemptResults):
    """One pass over an input: the dispatcher, the attempts and the outcome buffer."""

    __slots__ = (
        "_abort",
        "_dispatcher",
        "_drain_timer",
        "_exhausted",
        "_finished",
        "_heap",
        "_held",
        "_hseq",
        "_index",
        "_is_async",
        "_live",
        "_out",
        "_out_limit",
        "_out_waiter",
        "_pace",
        "_source",
        "_state",
        "_tasks",
        "_url",
        "_waiter",
        "cfg",
        "client",
        "engine",
        "gov",
        "loop",
        "policy",
        "stats",
    )

    def __init__(self, engine: Engine, calls: Iterable[Call] | AsyncIterable[Call]) -> None:
        self.engine = engine
        self.gov = engine.governor
        self.policy = engine.policy
        self.cfg = engine.config
        self.client = engine.client
        self._url = messages_url(self.client)
        if isinstance(calls, AsyncIterable):
            self._source: Any = aiter(calls)
            self._is_async = True
        else:
            self._source = iter(calls)
            self._is_async = False
        self._exhausted = False
        self._index = 0
        self._heap: list[tuple[float, int, Job]] = []
        self._hseq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: dict[int, Job] = {}
        self._out: deque[tuple[int, Outcome]] = deque()
        self._out_limit = max(64, 2 * self.cfg.max_concurrency)
        self._waiter: asyncio.Future[None] | None = None
        self._out_waiter: asyncio.Future[None] | None = None
        self._state = RUNNING
        self._abort: Verdict | None = None
        self._held: Job | None = None
        self._finished = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- outcomes ------------------------------------------------------------
    def _emit(self, job: Job, outcome: Outcome) -> None:
        self._live.pop(job.index, None)
        st = self.stats
        if outcome.status == SUCCEEDED:
            st.succeeded += 1
        elif outcome.status == FAILED:
            st.failed += 1
        else:
            st.cancelled += 1
        self._out.append((job.index, outcome))
        w = self._out_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _emit_cancelled(self, job: Job) -> None:
        self._emit(
            job,
            Outcome(
                job.call.key,
                CANCELLED,
                attempts=job.attempts,
                error_type="cancelled",
                error_message="the run was cancelled",
            ),
        )

    async def outcomes(self) -> AsyncGenerator[tuple[int, Outcome]]:
        self.loop = asyncio.get_running_loop()
        self._pace = PassBudget(self.loop)
        settle_heap()  # once per process: no full GC scans of the start-up heap on the loop
        self.stats = st = self.engine.stats = EngineStats(self.gov)
        st.started_at = self.gov.now()
        self.engine._runs.add(self)
        task = self._dispatcher = self.loop.create_task(self._dispatch())
        task.add_done_callback(self._dispatcher_done)
        out = self._out
        try:
            while True:
                while out:
                    item = out.popleft()
                    if len(out) < self._out_limit:
                        self._wake()
                    yield item
                if task.done():
                    if not out:
                        break
                    continue
                fut = self._out_waiter = self.loop.create_future()
                await fut
                self._out_waiter = None
            st.finished_at = self.gov.now()
            task.result()
            if self._abort is not None:
                raise RunAborted(self._abort.error_type, self._abort.message, self._undone_keys)
        finally:
            self.engine._runs.discard(self)
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            if not task.done():
                self.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
            if st.finished_at is None:
                st.finished_at = self.gov.now()

    def _dispatcher_done(self, _task: asyncio.Task[None]) -> None:
        w = self._out_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def cancel(self) -> None:
        if self._state == RUNNING:
            self._state = CANCELLING
            self._stop_everything()

    def drain(self, timeout: float) -> None:
        if self._state == RUNNING and self._drain_timer is None:
            self._drain_timer = self.loop.call_later(max(timeout, 0.0), self.cancel)
            self._wake()

    def _stop_everything(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._wake()

    # -- dispatch ------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, timeout: float | None) -> None:
        fut = self._waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _resolve, fut) if timeout is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _pull(self) -> Job | None:
        try:
            if self._is_async:
                call = await anext(self._source)
            else:
                call = next(self._source)
        except (StopIteration, StopAsyncIteration):
            self._exhausted = True
            return None
        if not isinstance(call, Call):
            raise TypeError(f"expected Call, got {type(call).__name__}")
        job = Job(call, self._index)
        self._index += 1
        self._live[job.index] = job
        self.stats.pulled += 1
        return job

    async def _dispatch(self) -> None:
        gov = self.gov
        heap = self._heap
        pace = self._pace
        try:
            while self._state == RUNNING:
                own = self._tasks
                if self._drain_timer is not None:  # draining: let what is in flight finish
                    if not own:
                        break
                    await self._sleep(None)
                    continue
                if gov.free_slots() <= 0 or len(self._out) >= self._out_limit:
                    warm = gov.warmup_left()
                    await self._sleep(warm if warm > 0 else (None if own else 0.05))
                    continue
                job = self._held
                self._held = None
                now = gov.now()
                if job is None:
                    if heap and heap[0][0] <= now:
                        job = heapq.heappop(heap)[2]
                    elif not self._exhausted:
                        job = await self._pull()
                        if self._state != RUNNING:
                            self._held = job
                            break
                        if self._drain_timer is not None:
                            self._held = job
                            continue
                        now = gov.now()
                    if job is None:
                        if heap:
                            await self._sleep(heap[0][0] - now)
                        elif own:
                            await self._sleep(None)
                        else:
                            return
                        continue
                in_cost = gov.estimate_input(job.in_raw)
                d = gov.delay(in_cost, job.out_cost, now)
                bd = self.engine.breaker.delay(now)
                if bd is None:  # the API looks down: wait for the probe in flight
                    self._held = job
                    await self._sleep(None)
                    continue
                if bd > d:
                    d = bd
                if d > 0:
                    self._held = job
                    await self._sleep(d)
                    continue
                self._launch(job, in_cost, now)
                if not pace.can_start():
                    # This loop pass did its share (starts, and the answers it handled):
                    # the next starts wait for the next pass (see pacing.py).
                    await asyncio.sleep(0)
        finally:
            if self._state != RUNNING or self._tasks or self._drain_timer is not None:
                await self._wind_down()

    async def _wind_down(self) -> None:
        """Cancel what is in flight, wait for it, and report what never finished."""
        if self._state == RUNNING:
            self._state = CANCELLING
        self._stop_everything()
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        leftovers = [entry[2] for entry in self._heap]
        self._heap.clear()
        if self._held is not None:
            leftovers.append(self._held)
            self._held = None
        if self._state == CANCELLING:
            for job in leftovers:
                self._emit_cancelled(job)

    @property
    def _undone_keys(self) -> list[Hashable]:
        return [job.call.key for _, job in sorted(self._live.items())]

    def _launch(self, job: Job, in_cost: float, now: float) -> None:
        ticket = self.gov.acquire(in_cost, job.out_cost, now)  # in_raw = in_cost / the factor now (exact)
        if job.started is None:
            job.started = now
        job.attempts += 1
        self.stats.requests += 1
        probe = self.engine.breaker.on_dispatch(now)
        self._pace.start()
        task = self.loop.create_task(self._attempt(job, ticket, probe))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, job, ticket))

    def _task_done(self, task: asyncio.Task[None], job: Job, ticket: Ticket) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            if ticket.open:
                # cancelled before its first step: the attempt never ran its own cleanup
                self.gov.release(ticket)
                if self._state == CANCELLING:
                    self._emit_cancelled(job)
        elif (exc := task.exception()) is not None:
            self._internal_error(exc, ticket)
        self._wake()

    # -- one attempt -----------------------------------------------------------
    async def _attempt(self, job: Job, ticket: Ticket, probe: bool = False) -> None:
        gov = self.gov
        try:
            if job.stream or ticket.wave:  # streamed: its headers may end the warm-up
                opened = (lambda h: self._wake() if gov.on_open(ticket, h) else None) if ticket.wave else None
                outcome, headers = await stream_attempt(self.client, job, self.cfg, opened)
            else:
                timeout = attempt_timeout(self.cfg, job, self.engine._latency)
                outcome, headers = await plain_attempt(self.client, job, timeout, self.engine._latency, self._url)
        except asyncio.CancelledError:
            gov.release(ticket)
            self.engine.breaker.on_abandoned(probe)
            if self._state == RUNNING:
                raise
            if self._state == CANCELLING:
                self._emit_cancelled(job)
            return
        except Exception as exc:
            self._pace.end()
            self._failed_attempt(job, ticket, classify(exc), probe)
            return
        self._pace.end()
        usage = outcome.usage or {}
        out_tokens = usage.get("output_tokens")
        in_tokens = usage.get("input_tokens")
        if in_tokens is not None:
            in_tokens += usage.get("cache_creation_input_tokens") or 0
        gov.on_success(ticket, in_tokens, out_tokens, headers)
        self.engine.breaker.on_answer(gov.now(), probe)
        st = self.stats
        st.ok += 1
        st.input_tokens += usage.get("input_tokens") or 0
        st.output_tokens += out_tokens or 0
        st.cache_creation_input_tokens += usage.get("cache_creation_input_tokens") or 0
        st.cache_read_input_tokens += usage.get("cache_read_input_tokens") or 0
        if job.call.validate is not None and self._review(job, outcome):
            return  # sent back once with the validation error
        self._emit(job, outcome)  # a finished call is reported even while cancelling or aborting


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
