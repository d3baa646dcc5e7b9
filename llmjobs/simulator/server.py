"""Run the simulator as a subprocess and talk to its admin endpoints (stdlib only)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SimulatorError", "SimulatorProcess"]

_REPO_ROOT = str(Path(__file__).resolve().parents[2])
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
_LISTENING = "llmjobs simulator listening on "


class SimulatorError(RuntimeError):
    """The simulator process failed to start or an admin call failed."""


class SimulatorProcess:
    """Runs ``python -m llmjobs.simulator`` as a subprocess (``sys.executable``).

    With ``port=None`` the server binds port 0 and reports the port it got on
    its first stdout line, so there is no race for a free port.
    """

    def __init__(self, *cli_args: str, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.cli_args = tuple(cli_args)
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}" if port else ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> SimulatorProcess:
        if self._proc is not None:
            raise SimulatorError("already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = _REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable, "-m", "llmjobs.simulator",
            "--host", self.host, "--port", str(self.port or 0), *self.cli_args,
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=_REPO_ROOT
        )
        deadline = time.monotonic() + timeout
        try:
            line = self._read_line(deadline)
            url = line.strip().removeprefix(_LISTENING)
            if not line.startswith(_LISTENING):
                raise SimulatorError(f"unexpected first line from simulator: {line!r}")
            self.base_url = url
            self.port = int(url.rsplit(":", 1)[1])
            while True:
                try:
                    self._call("GET", "/_sim/stats?brief=1", timeout=2.0)
                    return self
                except (OSError, SimulatorError):
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        except BaseException as exc:
            output = self._output()
            self.stop()
            if isinstance(exc, Exception):
                raise SimulatorError(f"simulator did not start: {exc}\n{output}") from exc
            raise

    def _read_line(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            buffer = b""
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SimulatorError("timed out waiting for the simulator to listen")
                if selector.select(remaining):
                    chunk = os.read(stdout.fileno(), 4096)
                    if not chunk:
                        raise SimulatorError(f"simulator exited with code {self._proc.wait()}")
                    buffer += chunk
        return buffer.split(b"\n", 1)[0].decode()

    def _output(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            text: str = self._log.read().decode(errors="replace")
            return text[-4000:]
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Terminate the process (SIGTERM), wait, kill if it does not exit."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimulatorProcess({self.base_url or 'not started'})"

    # ------------------------------------------------------------------ admin API
    def _call(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> Any:
        if not self.base_url:
            raise SimulatorError("not started")
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise SimulatorError(f"{method} {path}: HTTP {exc.code}: {detail}") from None

    def _call_dict(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        answer = self._call(method, path, payload)
        if not isinstance(answer, dict):
            raise SimulatorError(f"{method} {path}: expected a JSON object, got {answer!r:.200}")
        return answer

    def stats(self, brief: bool = False) -> dict[str, Any]:
        return self._call_dict("GET", "/_sim/stats?brief=1" if brief else "/_sim/stats")

    def reset(self) -> None:
        self._call("POST", "/_sim/reset", {})

    def configure(self, **settings: Any) -> dict[str, Any]:
        return self._call_dict("POST", "/_sim/config", settings)

    def config(self) -> dict[str, Any]:
        return self._call_dict("GET", "/_sim/config")

    def inject(self, *faults: str) -> None:
        self._call("POST", "/_sim/faults", {"faults": list(faults)})

    def outage(self, seconds: float, mode: str = "close") -> dict[str, Any]:
        """Fail every API request for ``seconds`` (0 ends it): ``close`` the
        connection without a response, or answer ``503`` or ``529``."""
        return self._call_dict("POST", f"/_sim/outage?seconds={seconds:g}&mode={mode}", {})
