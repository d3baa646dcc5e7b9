"""Simulator settings: one dataclass shared by the CLI, the ASGI app and /_sim/config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["CLI_DEFAULTS", "FIELD_HELP", "REMAINING_AT", "TIERS", "ConfigError", "SimConfig", "cli_flag"]

MiB = 1024 * 1024

#: Anthropic's published per-model limits for the Claude Sonnet/Opus 4.x class,
#: by usage tier: (requests, input tokens, output tokens) per minute. Each is a
#: token bucket holding a minute of refill (``burst`` 60).
TIERS: dict[int, tuple[int, int, int]] = {
    1: (50, 30_000, 8_000),
    2: (1_000, 450_000, 90_000),
    3: (2_000, 800_000, 160_000),
    4: (4_000, 2_000_000, 400_000),
}

#: When the ``anthropic-ratelimit-*-remaining`` headers of an admitted request are computed.
REMAINING_AT = ("admission", "answer", "refund")


class ConfigError(ValueError):
    """A setting has an unknown name or an invalid value."""


@dataclass
class SimConfig:
    """Every knob of the simulator. The dataclass defaults are *instant*
    (no latency, no limits, no faults), which is what tests want; the CLI uses
    :data:`CLI_DEFAULTS`, which add realistic latency."""

    rpm: int = 0
    itpm: int = 0
    otpm: int = 0
    burst: float = 60.0
    capacity: int = 0
    ttft: float = 0.0
    tps: float = 0.0
    fail_500: float = 0.0
    fail_529: float = 0.0
    hang: float = 0.0
    drop_stream: float = 0.0
    fail_should_retry_false: float = 0.0
    cut_stream: float = 0.0
    bad_json: float = 0.0
    ping_interval: float = 5.0
    api_key: str | None = None
    seed: int = 0
    answer_tokens: int = 0
    max_body: int = 32 * MiB
    batch_seconds: float = 0.0
    tier: int = 0
    remaining_at: str = "refund"
    cache_min_tokens: int = -1
    invalid_output: float = 0.0
    batch_error: float = 0.0
    batch_expire: float = 0.0
    batch_max_requests: int = 100_000
    batch_max_bytes: int = 256 * MiB
    no_structured_output: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: dict[str, Any]) -> set[str]:
        """Validate and apply ``changes``; return the names that changed.
        Nothing is applied if any value is invalid."""
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in _COERCE:
                raise ConfigError(f"unknown setting: {name!r}")
            try:
                clean[name] = _COERCE[name](value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{name}: {exc}") from None
        if clean.get("tier"):
            # A tier is a preset: it sets the limits the same change does not set explicitly.
            rpm, itpm, otpm = TIERS[clean["tier"]]
            for key, value in (("rpm", rpm), ("itpm", itpm), ("otpm", otpm), ("burst", 60.0)):
                clean.setdefault(key, value)
        changed = {n for n, v in clean.items() if getattr(self, n) != v}
        for name, value in clean.items():
            setattr(self, name, value)
        return changed


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("must be an integer")
    number = int(value)
    if number != float(value):
        raise ValueError("must be an integer")
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a number")
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a finite number >= 0")
    return number


def _positive_float(value: Any) -> float:
    number = _non_negative_float(value)
    if number == 0:
        raise ValueError("must be > 0")
    return number


def _probability(value: Any) -> float:
    number = _non_negative_float(value)
    if number > 1:
        raise ValueError("must be a probability between 0 and 1")
    return number


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError("must be a string or null")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("must be an integer")
    return int(value)


def _positive_int(value: Any) -> int:
    number = _non_negative_int(value)
    if number == 0:
        raise ValueError("must be > 0")
    return number


def _model_list(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError("must be a comma-separated string of model ids")
    return ",".join(part.strip() for part in value.split(",") if part.strip())


def _tier(value: Any) -> int:
    number = _non_negative_int(value)
    if number and number not in TIERS:
        raise ValueError(f"must be one of {sorted(TIERS)} (0 = no preset)")
    return number


def _remaining_at(value: Any) -> str:
    if value not in REMAINING_AT:
        raise ValueError(f"must be one of {', '.join(REMAINING_AT)}")
    return str(value)


def _cache_min(value: Any) -> int:
    number = _int(value)
    if number < -1:
        raise ValueError("must be -1 (each model's minimum) or a number of tokens >= 0")
    return number


_COERCE = {
    "rpm": _non_negative_int,
    "itpm": _non_negative_int,
    "otpm": _non_negative_int,
    "burst": _positive_float,
    "capacity": _non_negative_int,
    "ttft": _non_negative_float,
    "tps": _non_negative_float,
    "fail_500": _probability,
    "fail_529": _probability,
    "hang": _probability,
    "drop_stream": _probability,
    "fail_should_retry_false": _probability,
    "cut_stream": _probability,
    "bad_json": _probability,
    "ping_interval": _positive_float,
    "api_key": _optional_str,
    "seed": _int,
    "answer_tokens": _non_negative_int,
    "max_body": _non_negative_int,
    "batch_seconds": _non_negative_float,
    "tier": _tier,
    "remaining_at": _remaining_at,
    "cache_min_tokens": _cache_min,
    "invalid_output": _probability,
    "batch_error": _probability,
    "batch_expire": _probability,
    "batch_max_requests": _positive_int,
    "batch_max_bytes": _positive_int,
    "no_structured_output": _model_list,
}
assert set(_COERCE) == {f.name for f in dataclasses.fields(SimConfig)}

#: Defaults of ``python -m llmjobs.simulator``: unlimited, fault-free, but with
#: the latency of a real model (about 0.4 s to the first token, 60 tokens/s).
CLI_DEFAULTS: dict[str, Any] = {**SimConfig().as_dict(), "ttft": 0.4, "tps": 60.0, "batch_seconds": 2.0}

FIELD_HELP: dict[str, str] = {
    "rpm": "requests per minute (token bucket, refills continuously); 0 = unlimited",
    "itpm": "uncached input tokens per minute (input_tokens + cache_creation_input_tokens); 0 = unlimited",
    "otpm": "output tokens per minute; max_tokens is reserved at admission and corrected "
    "to the real output at the end; 0 = unlimited",
    "burst": "seconds of refill each bucket holds: capacity = limit * burst / 60 "
    "(60 = a full minute's worth, as Anthropic does)",
    "capacity": "maximum requests in flight; beyond it requests get 529 overloaded_error at once; 0 = unlimited",
    "ttft": "seconds to the first token (jittered +/-50%%); non-streaming requests wait ttft + output_tokens/tps",
    "tps": "output tokens per second after the first token; 0 = instant",
    "fail_500": "probability that an admitted request fails with 500 api_error (after ~ttft)",
    "fail_529": "probability that an admitted request fails with 529 overloaded_error",
    "hang": "probability that an admitted request never answers (a stream sends only pings)",
    "drop_stream": "probability that a stream is cut mid-way with an `event: error`",
    "fail_should_retry_false": "probability that an admitted request fails with 500 api_error carrying "
    "`x-should-retry: false`",
    "cut_stream": "probability that a stream ends mid-way without `message_stop` and without an error event "
    "(just EOF); a plain request's connection is closed without a response",
    "bad_json": "probability that an admitted request gets a 200 whose body is not JSON (billed; a stream: "
    "a truncated `message_start`, not billed)",
    "ping_interval": "seconds between `ping` events while a stream waits or stalls",
    "api_key": "accept only this API key (x-api-key or Authorization: Bearer); default: any non-empty key",
    "seed": "seed for the fault and jitter random generators",
    "answer_tokens": "approximate length of generic answers in tokens; 0 = natural length (20-120 tokens)",
    "max_body": "largest request body in bytes; larger ones get 413 request_too_large",
    "batch_seconds": "seconds a Message Batch stays in_progress before it ends with results (its requests "
    "finish one by one over that time)",
    "tier": "preset of Anthropic's published Sonnet/Opus 4.x limits for usage tier 1-4 (tier 4: 4,000 RPM, "
    "2,000,000 ITPM, 400,000 OTPM) with 60 s buckets; explicit --rpm/--itpm/--otpm/--burst override it; 0 = none",
    "remaining_at": "when the *-remaining headers of an admitted request are computed: admission (right after "
    "admitting), answer (at the answer, the call's own output reservation still held) or refund (after the "
    "unused reservation is refunded); a stream sends its headers at the start, so there all three report "
    "the reservation held",
    "cache_min_tokens": "shortest prefix (tokens) a cache_control breakpoint caches; -1 = each model's published "
    "minimum (1,024-4,096), 0 = any length",
    "invalid_output": "probability that a structured answer (output_config.format or a tool call) breaks its "
    "schema: a field of the wrong type, a missing required field, or prose before the JSON (text answers); "
    "also in batches",
    "batch_error": "probability that a Message Batch request ends `errored` (an api_error object in its result)",
    "batch_expire": "probability that a Message Batch request ends `expired` (never processed; not billed)",
    "batch_max_requests": "most requests in one Message Batch; more get 400 invalid_request_error",
    "no_structured_output": "comma-separated model ids (or id prefixes) that lack structured outputs: "
    "output_config.format and strict tools get 400 invalid_request_error (to test a fallback to a plain tool)",
    "batch_max_bytes": "largest Message Batch request body in bytes (256 MB); larger ones get 413 request_too_large",
}


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")
