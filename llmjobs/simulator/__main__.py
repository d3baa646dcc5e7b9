"""``python -m llmjobs.simulator``: serve the Anthropic-compatible simulator under uvicorn."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from .config import CLI_DEFAULTS, FIELD_HELP, SimConfig, cli_flag

_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The CLI parser; with ``suppress_defaults`` only the flags actually given
    end up in the parsed namespace."""
    parser = argparse.ArgumentParser(
        prog="python -m llmjobs.simulator",
        description="Anthropic-compatible Messages API simulator (rate limits, latency, faults). "
        "Introspection: GET /_sim/stats, POST /_sim/reset, GET|POST /_sim/config, POST /_sim/faults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0 = any free port; the URL is printed)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level",
    )
    for name, kind in SimConfig.__annotations__.items():
        parser.add_argument(
            cli_flag(name),
            dest=name,
            type=_TYPES[kind],
            default=argparse.SUPPRESS if suppress_defaults else CLI_DEFAULTS[name],
            metavar=name.upper(),
            help=FIELD_HELP[name],
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .app import SimulatorApp
    from .config import ConfigError

    changes = {name: getattr(args, name) for name in SimConfig.__annotations__}
    if args.tier:  # the preset sets the limits, except those given explicitly
        given = vars(build_parser(suppress_defaults=True).parse_args(argv))
        for name in ("rpm", "itpm", "otpm", "burst"):
            if name not in given:
                del changes[name]
    config = SimConfig()
    try:
        config.update(changes)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    app = SimulatorApp(config)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sys.exit(f"error: cannot bind {args.host}:{args.port}: {exc}")
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"llmjobs simulator listening on http://{host}:{port}", flush=True)

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http="httptools",
            loop="uvloop",
            access_log=False,
            lifespan="off",
            log_level=args.log_level,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=1,
            backlog=2048,
        )
    )
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
