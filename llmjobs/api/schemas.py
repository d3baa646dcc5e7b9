"""The REST API's request and response bodies (pydantic, through django-ninja)."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

__all__ = ["CreatedOut", "JobCounts", "JobIn", "JobOut", "JobUsage", "RetryOut"]

MAX_TOKENS_LIMIT = 64_000  # as the web form
CONCURRENCY_LIMIT = 512


class JobIn(Schema):
    """A new job. ``items`` are objects (their keys are the template's ``{placeholders}``)
    or strings (``{text}``)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    name: str = Field("", max_length=200)
    template: str = Field("", description="Prompt template with {placeholders}; empty sends each item's text.")
    system: str = ""
    model: str | None = Field(None, description="One of LLMJOBS_MODELS; default LLMJOBS_DEFAULT_MODEL.")
    max_tokens: int = Field(1024, ge=1, le=MAX_TOKENS_LIMIT)
    concurrency: int | None = Field(None, ge=1, le=CONCURRENCY_LIMIT)
    mode: Literal["realtime", "online", "batch"] = Field(
        "online", description="online (realtime), or batch: the Message Batches API, 50% cheaper, within 24 h."
    )
    output_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="JSON Schema (an object) every answer must match."
    )
    budget_usd: float | None = Field(
        None, gt=0, description="Stop dispatching before the job's cost passes this many USD (resumable)."
    )
    dedup: bool = Field(True, description="Send identical rendered requests once; every item gets the answer.")
    webhook_url: str = Field("", max_length=2000, description="POSTed a signed job.finished event.")
    items: list[dict[str, Any] | str] = Field(..., min_length=1)


class JobCounts(Schema):
    succeeded: int
    failed: int
    cancelled: int
    remaining: int


class JobUsage(Schema):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class JobOut(Schema):
    id: int
    name: str
    status: str
    model: str
    total: int
    filling: bool = Field(False, description="Items are still being inserted (total counts them all already).")
    counts: JobCounts
    progress: float
    usage: JobUsage
    mode: str = "online"
    cost_usd: str = Field(description='USD spent so far; "unknown" when the model has no known price.')
    estimate_usd: str
    estimated_cost_usd: str = "unknown"
    budget_usd: str = "unknown"
    saved_usd: str = "unknown"
    has_schema: bool
    last_error: str
    advice: str = Field("", description="A hint from the last run (e.g. a lower max_tokens), empty when none.")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    url: str


class CreatedOut(Schema):
    id: int
    status: str
    url: str


class RetryOut(Schema):
    reset: int
    job: JobOut
