"""`manage.py serve`: the app under uvicorn (ASGI), plus what it needs locally.

It also starts a background worker (`recover_jobs`, then django-tasks-db's
`db_worker`) unless --no-worker, and with no ANTHROPIC_API_KEY the embedded
Anthropic simulator at LLMJOBS_SIMULATOR_URL (unless one already answers
there). Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmjobs.conf import api_target, llmjobs_settings


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(value)
    return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/_sim/stats?brief=1", timeout=1):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Command(BaseCommand):
    help = (
        "Serve llmjobs under uvicorn (ASGI). Without ANTHROPIC_API_KEY it also runs "
        "the embedded Anthropic simulator. Ctrl-C stops everything it started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=_port, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--no-simulator",
            action="store_true",
            help="Do not start the embedded simulator even when no API key is set.",
        )
        parser.add_argument("--no-worker", action="store_true", help="Do not start a background worker (db_worker).")

    def handle(self, *args: Any, host: str, port: int, no_simulator: bool, no_worker: bool, **options: Any) -> None:
        import uvicorn

        from llmjobs.simulator.server import SimulatorProcess

        target = api_target()
        simulator = None
        if target.is_simulator and not no_simulator:
            url = str(target.base_url)  # always set for the simulator
            if _answers(url):
                self.stdout.write(f"Using the simulator already running at {url}")
            else:
                parts = urlsplit(url)
                extra = shlex.split(llmjobs_settings().simulator_args)
                simulator = SimulatorProcess(*extra, host=parts.hostname or "127.0.0.1", port=parts.port or 8765)
                try:
                    simulator.start()
                except Exception as exc:  # a clear one-liner, not a traceback
                    raise CommandError(f"could not start the simulator at {target.base_url}: {exc}") from None
                self.stdout.write(f"Simulator: {simulator.base_url}")
        worker = None
        if not no_worker:
            call_command("recover_jobs", stdout=self.stdout)
            worker = subprocess.Popen(
                [sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay"],
                cwd=settings.BASE_DIR,
            )
            self.stdout.write(f"Worker: db_worker (pid {worker.pid})")
        self.stdout.write(f"API calls go to the {target.describe()}")
        self.stdout.write(self.style.SUCCESS(f"llmjobs is running at http://{host}:{port}/  (Ctrl-C to stop)"))
        try:
            uvicorn.run(
                "project.asgi:application",
                host=host,
                port=port,
                lifespan="on",
                log_level=os.environ.get("LOG_LEVEL", "info").lower(),
                access_log=settings.DEBUG,
            )
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
            if simulator is not None:
                simulator.stop()
