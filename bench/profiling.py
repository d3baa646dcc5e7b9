"""Sampling profile of this very process with py-spy (all threads: the event loop and the
writer), summarised as a top-10 table. py-spy is optional: ``pip install py-spy``.

Usage (from a benchmark)::

    with Sampler() as sampler:
        ...  # the work to profile
    print(sampler.table())
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

__all__ = ["Sampler", "available"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def available() -> bool:
    return _py_spy() is not None


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path) if path.startswith("/") else path
    return f"{m['func']} ({path})"


class Sampler:
    """``py-spy record`` attached to this process while the ``with`` block runs."""

    def __init__(self, rate: int = 250) -> None:
        self.rate = rate
        self.self_samples: Counter[str] = Counter()
        self.total_samples: Counter[str] = Counter()
        self.samples = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = ""

    def __enter__(self) -> Sampler:
        exe = _py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        fd, self._out = tempfile.mkstemp(suffix=".txt", prefix="pyspy-")
        os.close(fd)
        cmd = [exe, "record", "--pid", str(os.getpid()), "--rate", str(self.rate), "--format", "raw"]
        cmd += ["--nonblocking", "--output", self._out]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        if self._proc.returncode not in (0, -signal.SIGINT, 130, 1):
            print("py-spy:", err.decode(errors="replace")[-500:], file=sys.stderr)
        self._parse(Path(self._out).read_text(errors="replace"))
        os.unlink(self._out)

    def _parse(self, raw: str) -> None:
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(f) for f in stack.split(";") if f]
            if not frames:
                continue
            self.samples += n
            self.self_samples[frames[-1]] += n
            for frame in set(frames):
                self.total_samples[frame] += n

    def table(self, top: int = 10, title: str = "") -> str:
        """Top ``top`` functions by own (self) samples, with their inclusive share."""
        total = max(self.samples, 1)
        lines = [title] if title else []
        lines += ["| # | function (file) | self % | incl % |", "|---|---|---|---|"]
        for i, (func, n) in enumerate(self.self_samples.most_common(top), 1):
            lines.append(f"| {i} | {func} | {100 * n / total:.1f} | {100 * self.total_samples[func] / total:.1f} |")
        lines.append(f"({self.samples} samples at {self.rate}/s, all threads, idle excluded)")
        return "\n".join(lines)

    def inclusive(self, top: int = 25) -> str:
        total = max(self.samples, 1)
        return "\n".join(f"{100 * n / total:5.1f}%  {func}" for func, n in self.total_samples.most_common(top))
