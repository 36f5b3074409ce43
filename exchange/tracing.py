"""OpenTelemetry tracing, optional: `pip install 'purpose-exchange[otel]'` and `[tracing] enabled = true`.

Disabled (the default), nothing here is imported and /token pays nothing. Enabled, each POST /token is
a server span continuing the caller's W3C `traceparent` (a malformed one starts a new trace), with one
child span per step (client_auth, trust, rules, mint, audit) current while it runs; the answer carries
`traceresponse` (W3C Trace Context Level 2: the same format, naming our span), and the trace id goes
into the audit record and the request's log line. Spans leave by OTLP over HTTP, batched.

A denial is not an error of the service: a step that refuses records `exchange.error` on its span;
only a crash or a 5xx marks a span as failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exchange.errors import ConfigError, OAuthError
from exchange.metrics import HistogramSeries
from exchange.telemetry import STEP_NAMES, Steps
from schemas.config import TracingConfig

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"


class Tracing:
    """The tracer provider of this process; built once, in the app's lifespan."""

    def __init__(self, config: TracingConfig) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            from exchange.preflight import OTEL_MISSING

            raise ConfigError([OTEL_MISSING]) from None
        self._trace = trace
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        # endpoint=None lets the exporter read $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the OTel convention).
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
        self._tracer = self._provider.get_tracer("exchange")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, headers: Mapping[str, str], name: str = "POST /token") -> RequestTrace:
        """The server span of one request, continuing the caller's `traceparent` if it has a valid one."""
        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(name, context=parent, kind=self._trace.SpanKind.SERVER)
        return RequestTrace(self._trace, self._tracer, span)

    def shutdown(self) -> None:
        """Send what is batched, then stop."""
        self._provider.shutdown()


class RequestTrace:
    """One request's server span and its step spans."""

    def __init__(self, otel: Any, tracer: Any, span: Any) -> None:
        self._otel = otel
        self._tracer = tracer
        self.span = span
        ctx = span.get_span_context()
        self.trace_id = f"{ctx.trace_id:032x}"
        flags = f"{int(ctx.trace_flags):02x}"
        value = f"00-{self.trace_id}-{ctx.span_id:016x}-{flags}".encode()
        #: The `traceresponse` header of the answer.
        self.response_header = (b"traceresponse", value)

    def steps(self, series: tuple[HistogramSeries, ...] | None) -> Steps:
        return _TracedSteps(self, series)

    def step_span(self, step: int) -> Any:
        """A context manager: the step's span, current (and ended) around the step."""
        parent = self._otel.set_span_in_context(self.span)
        span = self._tracer.start_span("exchange." + STEP_NAMES[step], context=parent)
        return self._otel.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        )

    def step_failed(self, error: BaseException) -> None:
        span = self._otel.get_current_span()
        if isinstance(error, OAuthError):
            span.set_attribute("exchange.error", error.error)
        else:
            span.record_exception(error)
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR))

    def annotate(self, attributes: Mapping[str, str | None]) -> None:
        for name, value in attributes.items():
            if value is not None:
                self.span.set_attribute(name, value)

    def end(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(self._otel.Status(self._otel.StatusCode.ERROR))
        self.span.end()


class _TracedSteps(Steps):
    """Steps that are also spans: each one current while it runs (so what it calls can join it)."""

    __slots__ = ("_active", "_trace")

    def __init__(self, trace: RequestTrace, series: tuple[HistogramSeries, ...] | None) -> None:
        super().__init__(series)
        self._trace = trace
        self._active: Any = None

    def __enter__(self) -> None:
        self._active = self._trace.step_span(self._step)
        self._active.__enter__()

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if error is not None:
            self._trace.step_failed(error)
        self._active.__exit__(kind, error, tb)
        super().__exit__(kind, error, tb)
