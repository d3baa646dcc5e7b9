"""Live progress of a job run in a terminal: the runner's ``on_progress`` callback.

``CliProgress`` is handed to ``JobRunner(on_progress=...)`` and is called once
per finished item. Three modes:

- ``bar``: a tqdm bar on a TTY, moved as items finish: done/total, items/s,
  ETA, 429s and the cost so far.
- ``lines``: output that is not a TTY (a log file, CI) gets one plain line every
  ``interval`` seconds instead of carriage-return redraws.
- ``off`` (``--no-progress``): nothing while running; the command prints the
  final summary.

The cost so far is priced from the engine's token counters with genai-prices
(``llmjobs.pricing``) on top of what the job had already spent before this run;
a model genai-prices does not know shows "cost unknown". Imports no Django.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, TextIO

from tqdm import tqdm

from .pricing import TokenUsage, price_totals

__all__ = ["CliProgress", "ProgressMode", "choose_mode", "format_cost"]

ProgressMode = Literal["bar", "lines", "off"]

LINE_INTERVAL = 5.0  # seconds between plain lines when the output is not a TTY
POSTFIX_INTERVAL = 0.5  # seconds between recomputing the bar's postfix (cost, 429s)


def choose_mode(*, no_progress: bool, stream: TextIO) -> ProgressMode:
    """``off`` with ``--no-progress``, ``bar`` on a terminal, ``lines`` otherwise."""
    if no_progress:
        return "off"
    isatty = getattr(stream, "isatty", None)
    try:
        return "bar" if isatty is not None and isatty() else "lines"
    except ValueError:  # a closed stream
        return "lines"


def format_cost(cost: Decimal | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.4f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"


class CliProgress:
    """Reports a run's progress as items finish (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_last_draw",
        "_last_line",
        "_last_postfix",
        "_start_done",
        "_started",
        "bar",
        "cost_before",
        "done",
        "initial",
        "interval",
        "lines_written",
        "mode",
        "model",
        "rate_limited",
        "stream",
        "tokens",
        "total",
    )

    def __init__(
        self,
        *,
        total: int,
        initial: int,
        model: str,
        mode: ProgressMode,
        stream: TextIO,
        cost_before: Decimal | None = Decimal(0),
        interval: float = LINE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.initial = initial
        self.done = initial
        self.model = model
        self.mode: ProgressMode = mode
        self.stream = stream
        self.cost_before = cost_before
        self.interval = interval
        self._clock = clock
        self._started = clock()
        self._start_done = initial
        self._last_line = self._started
        self._last_postfix = -float("inf")
        self._last_draw = -float("inf")
        self.rate_limited = 0
        self.tokens = TokenUsage()
        self.lines_written = 0
        self.bar: Any = None
        if mode == "bar":
            self.bar = tqdm(total=total, initial=initial, unit="item", dynamic_ncols=True, file=stream)

    # -- what the runner calls ---------------------------------------------------------

    def __call__(self, runner: Any) -> None:
        """``on_progress``: read the runner's report and engine counters, then report."""
        report = runner.report
        self.done = self.initial + report.succeeded + report.failed + getattr(report, "cancelled", 0)
        stats = runner.stats
        if stats is not None:
            self.rate_limited = int(getattr(stats, "rate_limited", 0))
            self.tokens = TokenUsage(
                input_tokens=int(getattr(stats, "input_tokens", 0)),
                output_tokens=int(getattr(stats, "output_tokens", 0)),
                cache_write_5m_tokens=int(getattr(stats, "cache_creation_input_tokens", 0)),
                cache_read_tokens=int(getattr(stats, "cache_read_input_tokens", 0)),
            )
        self.update()

    # -- derived -----------------------------------------------------------------------

    @property
    def items_per_s(self) -> float | None:
        elapsed = self._clock() - self._started
        if elapsed <= 0:
            return None
        return (self.done - self._start_done) / elapsed

    @property
    def eta_s(self) -> float | None:
        rate = self.items_per_s
        if not rate:
            return None
        return max(self.total - self.done, 0) / rate

    def cost(self) -> Decimal | None:
        """USD spent so far (before this run + this run's tokens); ``None`` when unknown."""
        if self.cost_before is None:
            return None
        run_done = max(self.done - self._start_done, 1)
        now = price_totals(self.model, self.tokens, requests=run_done)
        if now is None:
            return None
        return self.cost_before + now

    def line(self) -> str:
        """One plain progress line (the non-TTY mode)."""
        percent = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.items_per_s
        return (
            f"{self.done}/{self.total} items ({percent:.0f}%), "
            f"{0.0 if rate is None else rate:.1f} items/s, {self.rate_limited} 429s, "
            f"{format_cost(self.cost())}, ETA {_eta(self.eta_s)}"
        )

    # -- output ------------------------------------------------------------------------

    def update(self) -> None:
        now = self._clock()
        if self.mode == "bar":
            self.bar.n = self.done
            if now - self._last_postfix >= POSTFIX_INTERVAL or self.done >= self.total:
                self._last_postfix = now
                self.bar.set_postfix_str(f"429s={self.rate_limited}, {format_cost(self.cost())}", refresh=False)
            if now - self._last_draw >= self.bar.mininterval or self.done >= self.total:
                self._last_draw = now
                self.bar.refresh()
        elif self.mode == "lines" and now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.line())

    def write(self, message: str) -> None:
        """A message that doesn't break the bar (e.g. "Stopping...")."""
        if self.mode == "bar":
            self.bar.write(message, file=self.stream)
        else:
            self._write(message)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines_written += 1

    def close(self) -> None:
        if self.mode == "bar":
            self.bar.n = self.done
            self.bar.refresh()
            self.bar.close()
        elif self.mode == "lines" and self.done != self._start_done:
            self._write(self.line())  # the last reading, so a log always ends at the real count
