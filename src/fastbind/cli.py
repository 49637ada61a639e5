"""The ``fastbind`` command: ``serve`` a config file, ``check`` it, ``bench``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

from . import benchmark, core_info
from .bindings import RemoteBinding
from .config import Config, binding_cycles, build_runtime, read_config
from .errors import ConfigError
from .http.exchange import HTTPLimits
from .http.server import ListenError, format_address, run
from .http.supervisor import reserve_port, supervise
from .http.websocket import WebSocketLimits

__all__ = ("main",)

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DEFAULTS = HTTPLimits()
_WS = WebSocketLimits()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark's own parser.
        return int(benchmark.main(args[1:]) or 0)
    parser = _parser()
    options = parser.parse_args(args)
    if options.command is None:
        parser.print_help()
        return 2
    _configure_logging()
    try:
        if options.command == "serve":
            return _serve(options)
        return _check(options)
    except ConfigError as exc:
        print(f"fastbind: {exc}", file=sys.stderr)
        return 1


def version_text() -> str:
    """``fastbind --version``: the version, which core runs, the interpreter."""
    info = core_info()
    if info["core"] == "compiled":
        if info["fast_paths"]:
            paths = "fast paths on"
        elif info["fast_paths_built"]:
            paths = "fast paths off: FASTBIND_FAST_PATHS=0"
        else:
            paths = "fast paths not built for this interpreter"
        core = f"compiled ({paths}; ledger clock {info['clock']})"
    elif info["no_extensions"]:
        core = "pure (FASTBIND_NO_EXTENSIONS is set)"
    elif info["compiled_available"]:
        core = "pure (chosen in fastbind.core)"
    else:
        core = "pure (installed without the compiled core)"
    return (
        f"fastbind {info['version']}\n"
        f"core: {core}\n"
        f"interpreter: {info['interpreter']} on {info['platform']}"
    )


class _Version(argparse.Action):
    """``--version``, printed as its lines are (argparse's own action rewraps them)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastbind",
        description="Run Workers that call each other through service bindings.",
    )
    parser.add_argument("--version", action=_Version, help="show the version, the core and the interpreter, and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve a config file's entry Worker over HTTP/1.1",
        description="Serve the entry Worker of a fastbind.toml over HTTP/1.1 until SIGTERM or SIGINT.",
    )
    serve.add_argument("config", nargs="?", default="fastbind.toml",
                       help="the config file (default: fastbind.toml)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8787, help="port to listen on, 0 for any free one (default: 8787)")
    serve.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                       help="server processes sharing the port with SO_REUSEPORT (default: 1)")
    serve.add_argument("--entry", metavar="NAME", help="the Worker to serve (default: the first in the file)")
    serve.add_argument("--access-log", action="store_true", help="print one line per request to stdout")
    serve.add_argument("--max-body", type=_size, default=_DEFAULTS.max_body, metavar="BYTES",
                       help="largest request body accepted, e.g. 1048576 or 10M (default: 100M); larger get 413")
    serve.add_argument("--max-header-size", type=_size, default=_DEFAULTS.max_head, metavar="BYTES",
                       help="largest request line and headers (default: 64K); larger get 431")
    serve.add_argument("--read-timeout", type=_seconds, default=_DEFAULTS.read_timeout, metavar="SECONDS",
                       help="a client silent this long in the middle of a request gets 408 (default: 30)")
    serve.add_argument("--keep-alive-timeout", type=_seconds, default=_DEFAULTS.keep_alive_timeout,
                       metavar="SECONDS", help="idle keep-alive connections are closed after this (default: 5)")
    serve.add_argument("--ws-max-message", type=_size, default=_WS.max_message, metavar="BYTES",
                       help="largest WebSocket message accepted (default: 1M); larger close the socket with 1009")
    serve.add_argument("--ws-ping-interval", type=_seconds_or_off, default=_WS.ping_interval, metavar="SECONDS",
                       help="a WebSocket quiet this long is pinged; 0 sends no pings (default: 20)")
    serve.add_argument("--ws-ping-timeout", type=_seconds, default=_WS.ping_timeout, metavar="SECONDS",
                       help="a ping unanswered this long closes the WebSocket with 1011 (default: 20)")
    serve.add_argument("--ws-send-queue", type=_size, default=_WS.send_queue, metavar="BYTES",
                       help="what a Worker may queue for a WebSocket's client (default: 16M); past it, 1011")
    serve.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long in-flight requests and wait_until work may take (default: 30)")

    check = commands.add_parser(
        "check", help="validate a config file and print its binding graph",
        description="Validate a fastbind.toml (importing every Worker) and print which Worker binds which.",
    )
    check.add_argument("config", nargs="?", default="fastbind.toml",
                       help="the config file (default: fastbind.toml)")

    commands.add_parser("bench", help="run the benchmarks (options: fastbind bench --help)", add_help=False)
    return parser


def _serve(options: argparse.Namespace) -> int:
    config = read_config(options.config)
    runtime = build_runtime(config)
    entry = options.entry or config.entry
    if entry not in runtime.workers:
        raise ConfigError(
            f'{config.label}: --entry "{entry}" is not a Worker of this file '
            f"(its Workers: {', '.join(runtime.workers)})."
        )
    limits = HTTPLimits(
        max_body=options.max_body, max_head=options.max_header_size,
        read_timeout=options.read_timeout, keep_alive_timeout=options.keep_alive_timeout,
    )
    ws_limits = WebSocketLimits(
        max_message=options.ws_max_message, ping_interval=options.ws_ping_interval,
        ping_timeout=options.ws_ping_timeout, send_queue=options.ws_send_queue,
    )
    settings = {
        "limits": limits, "ws_limits": ws_limits, "access_log": options.access_log,
        "shutdown_timeout": options.shutdown_timeout,
    }
    if options.workers == 1:
        def announce(server: object) -> None:
            for host, port in getattr(server, "addresses"):
                _say(f'serving "{entry}" on {format_address(host, port)} (pid {os.getpid()})')

        try:
            return run(runtime, entry, host=options.host, port=options.port, on_ready=announce, **settings)
        except ListenError as exc:
            print(f"fastbind: {exc.strerror}", file=sys.stderr)
            return 1

    try:
        reserved = reserve_port(options.host, options.port)
    except OSError as exc:
        print(f"fastbind: cannot listen on {options.host}:{options.port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = reserved.getsockname()[1]

    def serve_child(ready: object) -> int:
        reserved.close()
        return run(runtime, entry, host=options.host, port=port, reuse_port=True,
                   on_ready=lambda server: ready(), **settings)  # type: ignore[operator]

    def announce_all(pids: list[int]) -> None:
        children = ", ".join(map(str, pids))
        _say(
            f'serving "{entry}" on {format_address(options.host, port)} '
            f"(pid {os.getpid()}, {len(pids)} worker processes: {children})"
        )

    try:
        return supervise(options.workers, serve_child, on_ready=announce_all,
                         kill_after=options.shutdown_timeout + 5.0)
    finally:
        reserved.close()


def _check(options: argparse.Namespace) -> int:
    config = read_config(options.config)
    build_runtime(config)  # imports every main and resolves every binding
    for line in describe(config):
        print(line)
    return 0


def describe(config: Config) -> list[str]:
    """The binding graph of ``config``, one line per Worker and per binding."""
    cycles = binding_cycles(config)
    count = len(config.workers)
    lines = [
        f'{config.label}: OK, {count} Worker{"s" if count != 1 else ""}; '
        f'"{config.entry}" is served by default.'
    ]
    for worker in config.workers:
        lines.append(f"{worker.name}  ({worker.main})")
        for binding, target in worker.services.items():
            if isinstance(target, RemoteBinding):
                lines.append(f"  {binding} -> {target.url}  (remote)")
                continue
            text = f"  {binding} -> {target.service}"
            if target.entrypoint:
                text += f" entrypoint {target.entrypoint}"
            if target.props:
                text += f" props {json.dumps(dict(target.props), default=str)}"
            if (worker.name, binding) in cycles:
                text += "  (cycle)"
            lines.append(text)
    if cycles:
        lines.append(
            "Bindings marked (cycle) lead back to their own Worker; each call still counts "
            "toward the depth limit."
        )
    return lines


def _say(message: str) -> None:
    print(f"fastbind: {message}", flush=True)


def _configure_logging() -> None:
    # One line per request from --access-log, whole lines from several processes.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.WARNING, format="fastbind: %(levelname)s %(name)s: %(message)s")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, not {value}")
    return value


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size in bytes (e.g. 1048576, 512K, 10M, 1G): {text!r}")
    value = int(match[1]) * _UNITS[match[2].lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return value


def _seconds_or_off(text: str) -> float | None:
    """Seconds, or 0 for "never" (None)."""
    if text.strip() in ("0", "0.0"):
        return None
    return _seconds(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value
