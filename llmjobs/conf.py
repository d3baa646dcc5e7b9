"""Where API calls go, decided once from settings.

With ANTHROPIC_API_KEY set, calls go to the real Anthropic API (or to
ANTHROPIC_BASE_URL when that is set too). Without a key they go to the
embedded simulator at LLMJOBS_SIMULATOR_URL with a placeholder key, so the app
works out of the box on a machine with no network.

The key itself is never rendered, logged or stored: only ``describe()`` is
shown to people, and it names the target, not the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

SIMULATOR_PLACEHOLDER_KEY = "sk-simulator-no-real-key"


@dataclass(frozen=True, slots=True)
class ApiTarget:
    api_key: str
    base_url: str | None
    is_simulator: bool

    def describe(self) -> str:
        if self.is_simulator:
            return f"embedded simulator at {self.base_url} (no ANTHROPIC_API_KEY set)"
        return f"Anthropic API at {self.base_url or 'https://api.anthropic.com'}"

    def __repr__(self) -> str:  # never leak the key through a repr in a log or traceback
        return f"ApiTarget(base_url={self.base_url!r}, is_simulator={self.is_simulator})"


def api_target() -> ApiTarget:
    if settings.ANTHROPIC_API_KEY:
        return ApiTarget(
            api_key=settings.ANTHROPIC_API_KEY,
            base_url=settings.ANTHROPIC_BASE_URL or None,
            is_simulator=False,
        )
    return ApiTarget(
        api_key=SIMULATOR_PLACEHOLDER_KEY,
        base_url=settings.LLMJOBS_SIMULATOR_URL,
        is_simulator=True,
    )
