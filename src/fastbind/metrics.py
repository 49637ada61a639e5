"""Prometheus metrics of a served Runtime, and the endpoint that serves them.

``fastbind serve --metrics 127.0.0.1:9100`` counts with the ``prometheus_client``
library (an optional extra: ``pip install 'fastbind[metrics]'``) and serves its text
format on that address, at ``/metrics``. With ``--workers N`` every process writes its
figures to files in one folder (the library's multiprocess mode) and any of them
answers a scrape with the sum over all.

| metric | labels | what |
|---|---|---|
| ``fastbind_requests_total`` | worker, status | every request, as its access-log line (499: the client went away) |
| ``fastbind_request_duration_seconds`` | worker | histogram, from the request head to the end of the answer |
| ``fastbind_subrequests_total`` | caller, target, kind, outcome, tenant | every ledger entry of ended pipelines |
| ``fastbind_limit_exceeded_total`` | limit | pipelines ended by a limit, calls stopped by their own (``get(name, limits=...)``), requests the server refused for one |
| ``fastbind_open_pipelines`` | | pipelines opened and not yet ended |

A fetch's ``target`` is counted by its origin (``https://host:port``), not its whole
URL: a label takes one value per series, and URLs are without bound. ``tenant`` is the
tenant Worker of a dispatch namespace (``"customers/acme"``) that made the subrequest or
that it called, "" when none did: a platform's accounting per customer.
"""

from __future__ import annotations

import importlib.util
import os
from time import perf_counter
from collections.abc import Callable
from typing import Any

from yarl import URL

from .errors import CpuLimitExceeded, SubrequestDepthError, TooManySubrequestsError
from .http.exchange import Exchange
from .http.server import Server
from .namespaces.extension import DispatchNamespaces
from .policy import PipelineObserver, PipelineReport
from .request import Request
from .response import Response
from .runtime import Runtime

__all__ = ("MISSING", "MULTIPROCESS_ENV", "Metrics", "use_multiprocess", "parse_address", "mark_process_dead", "available")

MISSING = "fastbind's metrics need prometheus_client: pip install 'fastbind[metrics]'"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The requests the server refuses for one of its limits, by the limit's option name.
_HTTP_LIMITS = {408: "read_timeout", 413: "max_body", 429: "pipelined_requests", 431: "max_header_size"}
EXCEEDED_CPU = "exceeded_cpu"  # the ledger outcome of a call past its own CPU limit
_PIPELINE_LIMITS = ((SubrequestDepthError, "depth"), (TooManySubrequestsError, "subrequests"),
                    (CpuLimitExceeded, "cpu_ms"))


def available() -> bool:
    """Whether prometheus_client is installed (``fastbind[metrics]``)."""
    return importlib.util.find_spec("prometheus_client") is not None


def use_multiprocess(folder: str) -> None:
    """Before any metric exists: every process that forks from here counts into ``folder``.

    prometheus_client chooses how it stores values when it is imported, by this
    environment variable, so this runs before the library is first imported.
    """
    os.environ[MULTIPROCESS_ENV] = folder


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) as the pair; ValueError when it is not one."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a host:port address: {text!r} (e.g. 127.0.0.1:9100)")
    return host, int(port)


class Metrics(PipelineObserver):
    """The metrics of one process: observes a Runtime, hears of every request, serves them.

    ``Metrics()`` makes the metrics in a registry of its own (or, with
    PROMETHEUS_MULTIPROC_DIR set, in that folder's files); ``observe(runtime)`` counts
    its pipelines, ``request_hook(worker)`` is the server's per-request hook and
    ``endpoint()`` the Server of ``/metrics``.
    """

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client import multiprocess
        except ImportError:
            raise ImportError(MISSING) from None
        self._prom = prom
        self._tenant_of: Callable[[str], str] = _no_tenant  # until observe() names the Runtime
        self.multiprocess = MULTIPROCESS_ENV in os.environ
        registry = prom.CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            # Each process writes its own files; a scrape reads them all.
            self.registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry = registry
        self.requests = prom.Counter(
            "fastbind_requests", "HTTP requests answered, by served Worker and status (499: the client went away).",
            ("worker", "status"), registry=registry,
        )
        self.duration = prom.Histogram(
            "fastbind_request_duration_seconds", "From a request's head to the end of its answer.",
            ("worker",), registry=registry,
        )
        self.subrequests = prom.Counter(
            "fastbind_subrequests", "Subrequests of ended pipelines (bindings, RPC, fetches, Durable Objects).",
            ("caller", "target", "kind", "outcome", "tenant"), registry=registry,
        )
        self.limits = prom.Counter(
            "fastbind_limit_exceeded", "Pipelines ended by a limit, and requests the server refused for one.",
            ("limit",), registry=registry,
        )
        self.open = prom.Gauge(
            "fastbind_open_pipelines", "Pipelines opened and not yet ended.", registry=registry,
            multiprocess_mode="livesum",
        )

    # -- the Runtime's pipelines ---------------------------------------------------------

    def observe(self, runtime: Runtime) -> None:
        runtime.add_observer(self)
        self._tenant_of = runtime.extension(DispatchNamespaces).tenant_of

    def opened(self, pipeline: Any, request: Any) -> None:
        self.open.inc()

    def ended(self, report: PipelineReport, state: Any) -> None:
        self.open.dec()
        tenant_of = self._tenant_of
        for record in report.subrequests:
            target = record.target
            if record.kind == "fetch":
                target = _origin(target)
            tenant = tenant_of(record.caller) or tenant_of(target)
            self.subrequests.labels(record.caller, target, record.kind, record.outcome or "running", tenant).inc()
            if record.outcome == EXCEEDED_CPU:  # a call stopped by its own cpu_ms
                self.limits.labels("cpu_ms").inc()
        error = report.error
        if error is not None:
            for kind, limit in _PIPELINE_LIMITS:
                if isinstance(error, kind):
                    self.limits.labels(limit).inc()

    # -- the server's requests ------------------------------------------------------------

    def request_hook(self, worker: str) -> Any:
        """The server's hook for requests served as ``worker`` (an AccessLog)."""
        requests = self.requests
        duration = self.duration.labels(worker)
        limits = self.limits

        def hook(connection: Any, ex: Exchange, status: int, sent: int) -> None:
            requests.labels(worker, str(status)).inc()
            if ex.start:
                duration.observe(perf_counter() - ex.start)
            if ex.reject:
                limit = _HTTP_LIMITS.get(ex.reject)
                if limit is not None:
                    limits.labels(limit).inc()

        return hook

    # -- the endpoint ---------------------------------------------------------------------

    def text(self) -> bytes:
        """The exposition text a scrape gets now."""
        return bytes(self._prom.generate_latest(self.registry))

    def endpoint(self) -> Server:
        """A Server that answers ``GET /metrics`` with ``text()`` (start it on an address)."""
        content_type = self._prom.CONTENT_TYPE_LATEST
        text = self.text

        async def metrics(request: Request, env: Any, ctx: Any) -> Response:
            if URL(request.url).path not in ("/metrics", "/metrics/"):
                return Response("Not Found: the metrics are at /metrics\n", status=404)
            return Response(text(), headers={"content-type": content_type})

        runtime = Runtime()
        runtime.add_worker("metrics", metrics)
        return Server(runtime, "metrics")


def _no_tenant(worker: str) -> str:
    return ""


def mark_process_dead(pid: int) -> None:
    """A process of a multiprocess group has ended: its gauges no longer count."""
    if MULTIPROCESS_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _origin(url: str) -> str:
    try:
        return str(URL(url).origin())
    except ValueError:
        return url
