"""Anthropic-compatible API simulator (no Django, no anthropic SDK).

Run it with ``python -m llmjobs.simulator``; drive it from tests with
:class:`llmjobs.simulator.server.SimulatorProcess`.
"""

from .app import FAULTS, SimulatorApp
from .buckets import Admission, RateLimiter, TokenBucket
from .config import SimConfig

__all__ = ["FAULTS", "Admission", "RateLimiter", "SimConfig", "SimulatorApp", "TokenBucket"]
