"""OpenTelemetry traces of pipelines, built from the ledger when each pipeline ends.

``instrument(runtime)`` adds a ``PipelineTracer`` to the Runtime's observers. A
pipeline becomes one span named after its top-level Worker, and each subrequest of
its ledger one child span named ``"<kind> <target>"`` (``binding auth``, ``rpc
users``, ``fetch https://...``, ``durable_object ROOMS``), parented by the ledger's
parent index: exactly the call tree, concurrent calls included. The spans are made
when the pipeline ends, from the times the ledger holds, so a binding call does no
tracing work at all; only an outbound fetch needs its span (and its ancestors') at
once, for the ``traceparent`` it sends. An incoming ``traceparent`` (any propagator
the OpenTelemetry API is configured with) continues its trace.

OpenTelemetry is an optional extra: ``pip install 'fastbind[otel]'``. This module
imports without it; ``instrument`` says what to install when it is missing.
"""

from __future__ import annotations

import importlib.util
import os
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .policy import PipelineObserver, PipelineReport
from .runtime import Runtime

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ("PipelineTracer", "instrument", "uninstrument", "configure_from_env", "MISSING", "available")

MISSING = "fastbind's tracing needs OpenTelemetry: pip install 'fastbind[otel]'"
_SCOPE = "fastbind"


def available() -> bool:
    """Whether the OpenTelemetry SDK is installed (``fastbind[otel]``)."""
    return importlib.util.find_spec("opentelemetry") is not None and importlib.util.find_spec(
        "opentelemetry.sdk") is not None


def instrument(runtime: Runtime, tracer_provider: TracerProvider | None = None) -> PipelineTracer:
    """Trace every pipeline of ``runtime`` from now on; returns the observer added.

    ``tracer_provider``: where the spans go; by default the OpenTelemetry API's global
    provider (``opentelemetry.trace.set_tracer_provider``).
    """
    tracer = PipelineTracer(tracer_provider)
    runtime.add_observer(tracer)
    return tracer


def uninstrument(runtime: Runtime, tracer: PipelineTracer) -> None:
    """Stop tracing ``runtime``'s pipelines with ``tracer`` (pipelines open now still end traced)."""
    runtime.remove_observer(tracer)


def _version() -> str | None:
    try:
        return metadata.version("fastbind")
    except metadata.PackageNotFoundError:  # run from a source tree
        return None


class _Trace:
    """What a PipelineTracer keeps of one pipeline between its start and its end."""

    __slots__ = ("context", "offset", "spans", "method", "url")

    def __init__(self, context: Context, offset: int, method: str, url: str) -> None:
        self.context = context  # the incoming trace context (its traceparent, baggage)
        self.offset = offset  # wall-clock ns minus the ledger's monotonic ns, read once
        self.spans: dict[int, Span] = {}  # ledger index (-1: the pipeline) -> span started
        self.method = method
        self.url = url


class _HeaderGetter:
    """How the OpenTelemetry propagators read a fastbind ``Headers``."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = carrier.get_all(key)
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [name for name, _ in carrier.items()]


class PipelineTracer(PipelineObserver):
    """Turns each pipeline of a Runtime into OpenTelemetry spans (see the module's doc)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            raise ImportError(MISSING) from None
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer(_SCOPE, _version())
        self._trace = trace
        self._propagate = propagate
        self._getter = _HeaderGetter()

    # -- PipelineObserver -------------------------------------------------------------

    def opened(self, pipeline: Any, request: Any) -> _Trace:
        context = self._propagate.extract(request.headers, getter=self._getter)  # type: ignore[arg-type]
        return _Trace(context, time.time_ns() - time.monotonic_ns(), request.method, request.url)

    def outbound_headers(self, state: _Trace, pipeline: Any, index: int) -> list[tuple[str, str]]:
        span = self._span(state, pipeline.entry, pipeline.start_ns, index, pipeline.subrequest)
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span, state.context))
        return list(carrier.items())

    def ended(self, report: PipelineReport, state: _Trace) -> None:
        records = report.subrequests
        now = time.time_ns()
        for record in records:
            span = self._span(state, report.entry, report.start_ns, record.index, records.__getitem__)
            attributes: dict[str, Any] = {
                "fastbind.caller": record.caller,
                "fastbind.target": record.target,
                "fastbind.kind": record.kind,
                "fastbind.depth": record.depth,
                "fastbind.outcome": record.outcome or "running",
            }
            if record.status is not None:
                attributes["http.response.status_code"] = record.status
            if record.kind == "fetch":
                attributes["url.full"] = record.target
            span.set_attributes(attributes)
            if record.outcome == "error" or (record.status or 0) >= 500:
                span.set_status(self._trace.StatusCode.ERROR)
            end = now if record.duration_ns < 0 else record.start_ns + record.duration_ns + state.offset
            span.end(end_time=end)
        root = self._span(state, report.entry, report.start_ns, -1, records.__getitem__)
        outcome = "error" if report.error is not None else ("canceled" if report.status is None else "ok")
        attributes = {
            "fastbind.target": report.entry,
            "fastbind.kind": "request",
            "fastbind.depth": 1,
            "fastbind.outcome": outcome,
            "http.request.method": state.method,
            "url.full": state.url,
        }
        if report.status is not None:
            attributes["http.response.status_code"] = report.status
        root.set_attributes(attributes)
        if report.error is not None or (report.status or 0) >= 500:
            root.set_status(self._trace.StatusCode.ERROR, None if report.error is None else repr(report.error))
        end = now if report.duration_ns < 0 else report.start_ns + report.duration_ns + state.offset
        root.end(end_time=end)

    # -- spans ---------------------------------------------------------------------------

    def _span(self, state: _Trace, entry: str, start_ns: int, index: int, record_at: Any) -> Span:
        """The span of ledger entry ``index`` (-1: the pipeline), started with its parents if need be."""
        span = state.spans.get(index)
        if span is not None:
            return span
        trace = self._trace
        if index < 0:
            span = self._tracer.start_span(
                entry, context=state.context, kind=trace.SpanKind.SERVER, start_time=start_ns + state.offset,
            )
        else:
            record = record_at(index)
            parent = self._span(state, entry, start_ns, record.parent, record_at)
            span = self._tracer.start_span(
                f"{record.kind} {record.target}",
                context=trace.set_span_in_context(parent, state.context),
                kind=trace.SpanKind.CLIENT if record.kind == "fetch" else trace.SpanKind.INTERNAL,
                start_time=record.start_ns + state.offset,
            )
        state.spans[index] = span
        return span


def configure_from_env() -> SdkTracerProvider:
    """A TracerProvider that exports as the standard ``OTEL_*`` variables say.

    ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default), ``console`` or ``none``; the
    OTLP exporter speaks ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (or
    ``OTEL_EXPORTER_OTLP_PROTOCOL``): ``http/protobuf`` (the default) or ``grpc``
    (with ``opentelemetry-exporter-otlp-proto-grpc`` installed), to the endpoint,
    headers and timeout of the other ``OTEL_EXPORTER_OTLP_*`` variables. The service
    name is ``OTEL_SERVICE_NAME`` (default "fastbind"); ``OTEL_TRACES_SAMPLER`` picks
    the sampler. The caller shuts the provider down at exit (it flushes what is left).
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as Provider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ImportError(MISSING) from None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "fastbind"}
    provider = Provider(resource=Resource.create(attributes))
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return provider
    if kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        return provider
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r}: fastbind serve --otel exports otlp, console or none")
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    ).strip().lower()
    exporter: Any
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise ImportError(
                "OTLP over gRPC needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        exporter = GrpcExporter()
    elif protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        except ImportError:
            raise ImportError(MISSING) from None
        exporter = HttpExporter()
    else:
        raise ValueError(f"OTLP protocol {protocol!r}: fastbind serve --otel speaks http/protobuf or grpc")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
