"""The async engine: pure asyncio (no Django), one shared ``AsyncAnthropic`` per run.

``Engine`` runs a (possibly endless, possibly async) stream of :class:`Call`
through a :class:`Governor` that paces requests and tokens per minute, holds the
in-flight ceiling of its :class:`ConcurrencyController`, pauses on 429/529 and
retries what is worth retrying.
"""

from ._types import CANCELLED, FAILED, SUCCEEDED, Call, EngineConfig, Outcome, RunAborted
from .bucket import Bucket
from .calls import run_calls
from .client import make_client
from .concurrency import ConcurrencyController
from .governor import Governor, Ticket
from .retry import AttemptTimeout, RetryPolicy, StreamError, Verdict, classify
from .run import Engine
from .stats import EngineStats
from .stream import TextStream, stream_text
from .tokens import estimate_input_tokens

__all__ = [
    "CANCELLED",
    "FAILED",
    "SUCCEEDED",
    "AttemptTimeout",
    "Bucket",
    "Call",
    "ConcurrencyController",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Governor",
    "Outcome",
    "RetryPolicy",
    "RunAborted",
    "StreamError",
    "TextStream",
    "Ticket",
    "Verdict",
    "classify",
    "estimate_input_tokens",
    "make_client",
    "run_calls",
    "stream_text",
]
