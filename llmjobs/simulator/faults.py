"""Faults: drawn at random at the configured rates, or injected (``POST
/_sim/faults`` for the next requests, or an ``x-sim-fault`` request header)."""

from __future__ import annotations

import random

from .config import SimConfig

__all__ = ["FAULTS", "draw"]

#: Fault names accepted by /_sim/faults and the ``x-sim-fault`` header.
FAULTS = frozenset({"500", "529", "429", "hang", "drop_stream", "stall_stream"})


def draw(cfg: SimConfig, rng: random.Random, stream: bool) -> str | None:
    """One seeded draw for an admitted request: a fault name or None."""
    if not (cfg.fail_529 or cfg.fail_500 or cfg.hang or (stream and cfg.drop_stream)):
        return None
    value = rng.random()
    edge = cfg.fail_529
    if value < edge:
        return "529"
    if value < (edge := edge + cfg.fail_500):
        return "500"
    if value < (edge := edge + cfg.hang):
        return "hang"
    if stream and value < edge + cfg.drop_stream:
        return "drop_stream"
    return None
