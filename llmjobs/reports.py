"""What one run of a job did: the runner's report, read by commands, tasks and previews."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .engine import EngineStats, Outcome

__all__ = ["RunReport", "engine_counter"]


@dataclass(slots=True)
class RunReport:
    """What one run did. ``status`` is the job's status when the run ended."""

    job_id: int
    status: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    interrupted: bool = False
    aborted: str = ""
    db_retries: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    advice: str = ""  # a hint for the user (e.g. a lower max_tokens), "" when none
    outcomes: list[Outcome] = field(default_factory=list)  # previews only


def engine_counter(stats: EngineStats, name: str) -> int:
    """One of the engine's live counters (``rate_limited``, ``retries``...)."""
    return int(getattr(stats, name))
