"""The ``fastbind`` command: ``serve`` a config file, ``check`` it, ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from . import benchmark, core_info, metrics, reload, tracing
from .bindings import RemoteBinding
from .cluster.node import NodeSetup
from .config import Config, binding_cycles, build_runtime, read_config
from .errors import ConfigError
from .http.access_log import FORMATS
from .http.exchange import HTTPLimits
from .http.server import ListenError, format_address, run, tls_context
from .http.supervisor import reserve_port, supervise
from .http.websocket import WebSocketLimits
from .namespaces import Unavailable
from .runtime import Runtime

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
    _configure_logging(getattr(options, "log_format", "text"))
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
    serve.add_argument("--node", metavar="NAME",
                       help="this node's name in the config's [cluster] (its Durable Objects are its share)")
    serve.add_argument("--durable-dir", metavar="DIR",
                       help="keep Durable Object storage in SQLite files here (default: in memory)")
    serve.add_argument("--access-log", action="store_true", help="print one line per request to stdout")
    serve.add_argument("--log-format", choices=FORMATS, default="text",
                       help="access-log lines and log records as text or as one JSON object a line (default: text)")
    serve.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain included)")
    serve.add_argument("--ssl-keyfile", metavar="FILE", help="the certificate's private key (PEM), if not in the certfile")
    serve.add_argument("--ssl-keyfile-password", metavar="PASSWORD", help="the password of an encrypted key file")
    serve.add_argument("--reload", action="store_true",
                       help="restart when the config or a .py file beside it changes (development; one process)")
    serve.add_argument("--reload-dir", action="append", default=[], metavar="DIR",
                       help="another folder to watch with --reload (repeatable)")
    serve.add_argument("--fd", type=int, metavar="N",
                       help="serve on listening socket N, inherited (systemd socket activation); --host/--port unused")
    serve.add_argument("--otel", action="store_true",
                       help="export OpenTelemetry traces, configured by the OTEL_* variables (fastbind[otel])")
    serve.add_argument("--metrics", type=_address, metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (fastbind[metrics])")
    serve.add_argument("--max-body", type=_size, default=_DEFAULTS.max_body, metavar="BYTES",
                       help="largest request body accepted, e.g. 1048576 or 10M (default: 100M); larger get 413")
    serve.add_argument("--max-header-size", type=_size, default=_DEFAULTS.max_head, metavar="BYTES",
                       help="largest request line and headers (default: 64K); larger get 431")
    serve.add_argument("--read-timeout", type=_seconds, default=_DEFAULTS.read_timeout, metavar="SECONDS",
                       help="a client silent this long in the middle of a request gets 408 (default: 30)")
    serve.add_argument("--keep-alive-timeout", type=_seconds, default=_DEFAULTS.keep_alive_timeout,
                       metavar="SECONDS", help="idle keep-alive connections are closed after this (default: 5)")
    serve.add_argument("--write-timeout", type=_seconds, default=_DEFAULTS.write_timeout, metavar="SECONDS",
                       help="a client that takes none of its answer for this long is disconnected (default: 30)")
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
    refusal = _refused_together(options)
    if refusal:
        print(f"fastbind: {refusal}", file=sys.stderr)
        return 2
    config = read_config(options.config)
    if options.reload:
        return _serve_reloading(options, config)
    runtime = build_runtime(config)
    entry = options.entry or config.entry
    if entry not in runtime.workers:
        raise ConfigError(
            f'{config.label}: --entry "{entry}" is not a Worker of this file '
            f"(its Workers: {', '.join(runtime.workers)})."
        )
    setup = NodeSetup(slots=options.workers, node=options.node, cluster=config.cluster,
                      durable_dir=options.durable_dir, port=options.port)
    try:
        return _serve_node(options, runtime, entry, setup)
    finally:
        setup.close()


def _serve_node(options: argparse.Namespace, runtime: Any, entry: str, setup: NodeSetup) -> int:
    limits = HTTPLimits(
        max_body=options.max_body, max_head=options.max_header_size,
        read_timeout=options.read_timeout, keep_alive_timeout=options.keep_alive_timeout,
        write_timeout=options.write_timeout,
    )
    ws_limits = WebSocketLimits(
        max_message=options.ws_max_message, ping_interval=options.ws_ping_interval,
        ping_timeout=options.ws_ping_timeout, send_queue=options.ws_send_queue,
    )
    settings: dict[str, Any] = {
        "limits": limits, "ws_limits": ws_limits,
        "access_log": options.log_format if options.access_log else False,
        "shutdown_timeout": options.shutdown_timeout,
    }
    scheme = "https" if options.ssl_certfile else "http"
    if options.ssl_certfile:
        try:  # the files are read here, once, so that a wrong one fails before anything is served
            tls_context(options.ssl_certfile, options.ssl_keyfile, options.ssl_keyfile_password)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            print(f"fastbind: cannot use the TLS certificate {options.ssl_certfile}: {exc}", file=sys.stderr)
            return 1
    with ExitStack() as cleanup:
        if options.metrics is not None and options.workers > 1 and metrics.MULTIPROCESS_ENV not in os.environ:
            metrics.use_multiprocess(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="fastbind-metrics-")))

        def serve_here(slot: int = 0, **where: Any) -> int:
            """In the process that serves (slot ``slot`` of the node): its place in the node,
            tracing, metrics, TLS, then ``run``."""
            with ExitStack() as stack:
                extra = dict(settings)
                forwarder = setup.join(runtime, slot)
                extra.update(setup.sockets(slot))
                watcher = setup.watcher(runtime, forwarder)
                if watcher is not None:
                    announce = where["on_ready"]

                    def ready_and_watch(server: object) -> None:
                        asyncio.get_running_loop().create_task(watcher())
                        announce(server)

                    where["on_ready"] = ready_and_watch
                if options.ssl_certfile:
                    extra["ssl"] = tls_context(options.ssl_certfile, options.ssl_keyfile, options.ssl_keyfile_password)
                if options.otel:
                    provider = tracing.configure_from_env()
                    stack.callback(provider.shutdown)  # flushes the spans not exported yet
                    tracing.instrument(runtime, provider)
                if options.metrics is not None:
                    counting = metrics.Metrics()
                    counting.observe(runtime)
                    extra["log_hooks"] = [counting.request_hook(entry)]
                    extra["companions"] = [(counting.endpoint(), *where.pop("metrics_at"))]
                return run(runtime, entry, **where, **extra)

        node = f', node "{options.node}"' if options.node else ""
        if options.workers == 1:
            def announce(server: object) -> None:
                for host, port in getattr(server, "addresses"):
                    _say(f'serving "{entry}" on {format_address(host, port, scheme)} (pid {os.getpid()}{node})')

            where: dict[str, Any] = {"host": options.host, "port": options.port, "on_ready": announce}
            if options.fd is not None:
                where["sock"] = socket.socket(fileno=options.fd)
            if options.metrics is not None:
                where["metrics_at"] = options.metrics
            try:
                return serve_here(**where)
            except ListenError as exc:
                print(f"fastbind: {exc.strerror}", file=sys.stderr)
                return 1
        return _serve_processes(options, entry, scheme, serve_here)


def _serve_processes(options: argparse.Namespace, entry: str, scheme: str, serve_here: Callable[..., int]) -> int:
    """``--workers N``: N forked processes on one SO_REUSEPORT port (and metrics port)."""
    reserved: list[socket.socket] = []
    try:
        for host, port in [(options.host, options.port), *([options.metrics] if options.metrics else [])]:
            try:
                reserved.append(reserve_port(host, port))
            except OSError as exc:
                print(f"fastbind: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
                return 1
        port = reserved[0].getsockname()[1]
        metrics_at = (options.metrics[0], reserved[1].getsockname()[1]) if options.metrics else None

        def serve_child(ready: object, slot: int) -> int:
            for sock in reserved:
                sock.close()
            where: dict[str, Any] = {"host": options.host, "port": port, "reuse_port": True,
                                     "on_ready": lambda server: ready()}  # type: ignore[operator]
            if metrics_at is not None:
                where["metrics_at"] = metrics_at
            return serve_here(slot, **where)

        def announce_all(pids: list[int]) -> None:
            children = ", ".join(map(str, pids))
            node = f', node "{options.node}"' if options.node else ""
            _say(
                f'serving "{entry}" on {format_address(options.host, port, scheme)} '
                f"(pid {os.getpid()}, {len(pids)} worker processes: {children}{node})"
            )

        return supervise(options.workers, serve_child, on_ready=announce_all,
                         kill_after=options.shutdown_timeout + 5.0,
                         on_exit=metrics.mark_process_dead if options.metrics else None)
    finally:
        for sock in reserved:
            sock.close()


def _refused_together(options: argparse.Namespace) -> str | None:
    """Options that cannot go together, said before anything is loaded."""
    if options.reload and options.workers > 1:
        return "--reload restarts one server process; it cannot be used with --workers N."
    if options.fd is not None and (options.workers > 1 or options.reload):
        return "--fd serves an inherited socket in one process; not with --workers N or --reload."
    if options.ssl_keyfile and not options.ssl_certfile:
        return "--ssl-keyfile needs --ssl-certfile."
    for wanted, extra in ((options.otel, tracing), (options.metrics, metrics), (options.reload, reload)):
        if wanted and not extra.available():
            return f"{extra.MISSING}."
    return None


def _serve_reloading(options: argparse.Namespace, config: Config) -> int:
    """``--reload``: the parent listens and watches; children serve (fastbind.reload)."""
    try:
        sock = reload.listen(options.host, options.port)
    except OSError as exc:
        print(f"fastbind: cannot listen on {options.host}:{options.port}: {exc.strerror}", file=sys.stderr)
        return 1
    folders = [config.path.parent, *(Path(d).resolve() for d in options.reload_dir)]
    try:
        return reload.watch_and_serve(_child_args(options), sock, folders,
                                      stop_timeout=options.shutdown_timeout + 5.0)
    except ImportError as exc:
        print(f"fastbind: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()


def _child_args(options: argparse.Namespace) -> list[str]:
    """The ``serve`` options a reloaded child gets: the parent's, less where it listens."""
    skipped = {"config", "reload", "reload_dir", "host", "port", "fd", "workers", "help"}
    args = [options.config]
    for action in _parser_actions():
        if action.dest in skipped or not action.option_strings:
            continue
        value = getattr(options, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(value, tuple):  # --metrics HOST:PORT, parsed
            host, port = value
            value = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        args += [flag] if value is True else [flag, str(value)]
    return args


def _parser_actions() -> list[argparse.Action]:
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices["serve"]._actions)



def _check(options: argparse.Namespace) -> int:
    config = read_config(options.config)
    runtime = build_runtime(config)  # imports every main and resolves every binding
    for line in describe(config, runtime):
        print(line)
    return 0


def describe(config: Config, runtime: Runtime | None = None) -> list[str]:
    """The binding graph of ``config``, one line per Worker and per binding, then each
    dispatch namespace with its Workers (loaded, when they run in this process, so that
    one that fails to load says so) when ``runtime`` is given."""
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
        for binding, namespace in worker.dispatch_namespaces.items():
            lines.append(f"  {binding} -> namespace {namespace}  (dispatch)")
    for ns in config.namespaces:
        lines.extend(_describe_namespace(ns.name, runtime))
    if cycles:
        lines.append(
            "Bindings marked (cycle) lead back to their own Worker; each call still counts "
            "toward the depth limit."
        )
    return lines


def _describe_namespace(name: str, runtime: Runtime | None) -> list[str]:
    if runtime is None:
        return [f"namespace {name}"]
    namespace = runtime.namespace(name)
    options = namespace.options
    traits = [str(options.directory) if options.directory is not None else "no directory"]
    if options.outbound:
        traits.append(f"outbound {options.outbound}")
    if options.cpu_ms is not None or options.subrequests is not None:
        traits.append(f"limits cpu_ms={options.cpu_ms} subrequests={options.subrequests}")
    if options.isolation == "process":
        traits.append(f"isolation process, {options.memory_mb} MB each")
    names = namespace.names()
    lines = [f"namespace {name}  ({'; '.join(traits)}): {len(names)} Worker{'s' if len(names) != 1 else ''}"]
    for binding in list(options.vars) + list(options.services):
        target = options.services.get(binding)
        where = "var" if target is None else getattr(target, "url", None) or getattr(target, "service", "")
        lines.append(f"  each Worker: {binding} -> {where}")
    for tenant in names[: options.max_loaded]:
        text = f"  {tenant}"
        if options.isolation != "process":  # their code runs here anyway: load it
            fetcher = namespace.dispatcher.get(tenant)
            if isinstance(fetcher, Unavailable):
                text += f"  (fails to load: {fetcher.error})"
        lines.append(text)
    if len(names) > options.max_loaded:
        lines.append(f"  ... and {len(names) - options.max_loaded} more")
    return lines


def _say(message: str) -> None:
    print(f"fastbind: {message}", flush=True)


def _configure_logging(log_format: str = "text") -> None:
    # One line per request from --access-log, whole lines from several processes.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    else:
        logging.basicConfig(level=logging.WARNING, format="fastbind: %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """``--log-format json``: each log record one JSON object on one line (traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "type": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _address(text: str) -> tuple[str, int]:
    try:
        return metrics.parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
