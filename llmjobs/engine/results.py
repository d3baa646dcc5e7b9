"""What a run does with an attempt's result, beyond reporting it: a structured answer
that fails its check is sent back once (``repair``); a failed attempt is classified,
counted, told to the governor and the breaker, and retried or failed (``retry``); a bug
in the engine's own bookkeeping stops the run loudly. A mixin of ``run._Run``."""

from __future__ import annotations

import contextlib
import heapq
import logging
from typing import TYPE_CHECKING, Any, Protocol

from ._job import Job
from ._types import FAILED, Outcome
from .repair import add_usage, invalid_outcome, repair_params
from .retry import ABORT, FAIL, OVERLOADED, RATE_LIMITED, Verdict, is_outage
from .tokens import estimate_input_tokens

if TYPE_CHECKING:
    from .governor import Governor, Ticket
    from .retry import RetryPolicy
    from .stats import EngineStats

_log = logging.getLogger("llmjobs.engine")

__all__ = ["ABORTING", "CANCELLING", "RUNNING", "AttemptResults"]

RUNNING, CANCELLING, ABORTING = 0, 1, 2  # a run's state


class _RunState(Protocol):
    """What these methods use of the run (``run._Run``)."""

    engine: Any
    gov: Governor
    policy: RetryPolicy
    stats: EngineStats
    _abort: Verdict | None
    _heap: list[tuple[float, int, Job]]
    _hseq: int
    _state: int

    def _emit(self, job: Job, outcome: Outcome) -> None: ...
    def _emit_cancelled(self, job: Job) -> None: ...
    def _stop_everything(self) -> None: ...
    def _wake(self) -> None: ...


class AttemptResults:
    """The result handling of ``_Run`` (which holds the state these methods use)."""

    __slots__ = ()
    _abort: Verdict | None

    def _internal_error(self: _RunState, exc: BaseException, ticket: Ticket) -> None:
        """A bug in the engine's own bookkeeping around an attempt (never an API error:
        those are classified in ``_attempt``). The run stops at once, loudly: its unfinished
        items are the ``RunAborted``'s undone keys (a runner puts them back to pending),
        instead of an item that silently never ends and a run that never finishes."""
        _log.error("engine: internal error after an attempt; stopping the run", exc_info=exc)
        if ticket.open:
            with contextlib.suppress(Exception):
                self.gov.release(ticket)
        if self._state == RUNNING:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            self._abort = Verdict(ABORT, "internal", "internal_error", f"llmjobs engine error: {message}")
            self._state = ABORTING
            self._stop_everything()

    def _review(self: _RunState, job: Job, outcome: Outcome) -> bool:
        """Validate a structured answer; True when the job was queued again to repair it."""
        assert job.call.validate is not None
        error = job.call.validate(outcome.text, outcome.stop_reason)
        outcome.usage = add_usage(job.spent, outcome.usage)
        if error is None:
            return False
        if job.repaired or self._state != RUNNING:
            invalid_outcome(outcome, error)
            return False
        job.repaired = True
        job.spent = outcome.usage
        job.params = repair_params(job.params, outcome.text, error)
        job.in_raw = estimate_input_tokens(job.params)
        self.stats.retries += 1
        self._hseq += 1
        heapq.heappush(self._heap, (self.gov.now(), self._hseq, job))
        self._wake()
        return True

    def _failed_attempt(self: _RunState, job: Job, ticket: Ticket, verdict: Verdict, probe: bool = False) -> None:
        gov = self.gov
        st = self.stats
        now = gov.now()
        kind = verdict.kind
        breaker = self.engine.breaker
        if is_outage(verdict):
            breaker.on_outage_failure(now, probe, overloaded=kind == OVERLOADED)
        elif verdict.action != ABORT:
            breaker.on_answer(now, probe)  # the API answered: it is up
        else:
            breaker.on_abandoned(probe)
        # while the API is down, failures are the outage's, not the item's
        outage = breaker.is_open
        failures_before = job.failures
        if kind == RATE_LIMITED:
            st.rate_limited += 1
            gov.on_rate_limited(ticket, verdict.retry_after, verdict.headers, now)
        elif kind == OVERLOADED:
            st.overloaded += 1  # never the item's fault: it does not use up its attempts
            gov.on_overloaded(ticket, verdict.retry_after, now)
        else:
            st.errors += 1
            if verdict.error_type == "timeout":
                st.timeouts += 1
                job.timeouts += 1
            if verdict.action != FAIL:
                job.failures += 1
            gov.on_failure(ticket, now)
        if outage:
            job.failures = failures_before
        elif breaker.suspect and job.failures >= self.policy.max_attempts and is_outage(verdict):
            # The API may be going down (the breaker has not decided yet): an item
            # at the end of its budget waits for the verdict instead of failing now.
            job.failures = self.policy.max_attempts - 1
        job.last_error = verdict
        if self._state != RUNNING:
            if self._state == CANCELLING:
                self._emit_cancelled(job)
            return
        if verdict.action == ABORT:
            self._abort = verdict
            self._state = ABORTING
            self._stop_everything()
            return
        if kind in (RATE_LIMITED, OVERLOADED) or outage:
            retry_at = now  # the governor's pause (or the open breaker) holds the whole run back
        else:
            retry_at = now + self.policy.backoff(job.failures)
        started = retry_at if outage else (job.started or now)  # an outage does not eat the item's deadline
        if self.policy.allows(verdict, job.failures, started, retry_at):
            st.retries += 1
            self._hseq += 1
            heapq.heappush(self._heap, (retry_at, self._hseq, job))
            self._wake()
            return
        self._emit(
            job,
            Outcome(
                job.call.key,
                FAILED,
                attempts=job.attempts,
                error_type=verdict.error_type,
                error_message=verdict.message,
            ),
        )
