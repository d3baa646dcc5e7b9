"""The command line and the import rules."""

from __future__ import annotations

import subprocess
import sys

from llmjobs.simulator.config import SimConfig, cli_flag

from .conftest import MODEL, raw_post, user


def test_every_setting_has_a_documented_flag():
    result = subprocess.run(
        [sys.executable, "-m", "llmjobs.simulator", "--help"], capture_output=True, text=True, check=True
    )
    flags = ["--host", "--port", "--log-level", *(cli_flag(name) for name in SimConfig().as_dict())]
    for flag in flags:
        assert flag in result.stdout
    for required in ("--rpm", "--itpm", "--otpm", "--capacity", "--ttft", "--tps", "--fail-500", "--fail-529",
                     "--hang", "--drop-stream"):  # fmt: skip
        assert required in result.stdout


def test_no_django_and_no_sdk_imports():
    code = (
        "import sys, llmjobs.simulator.app, llmjobs.simulator.server, llmjobs.simulator.__main__;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'anthropic')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_flags_reach_the_server():
    from llmjobs.simulator.server import SimulatorProcess

    with SimulatorProcess("--rpm", "1", "--ttft", "0", "--tps", "0", "--answer-tokens", "7") as server:
        config = server.config()
        assert (config["rpm"], config["answer_tokens"]) == (1, 7)
        payload = {"model": MODEL, "max_tokens": 50, "messages": user("cli")}
        assert raw_post(server.base_url, "/v1/messages", payload)[0] == 200
        status, headers, _ = raw_post(server.base_url, "/v1/messages", payload)
        assert status == 429 and int(headers["retry-after"]) >= 59


def test_bad_flag_values_exit_with_an_error():
    result = subprocess.run(
        [sys.executable, "-m", "llmjobs.simulator", "--fail-500", "3"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "probability" in result.stderr
