"""Request identity and tracing: an X-Request-ID on every response and log line, W3C trace context, OpenTelemetry.

Identity is always on (its ASGI side is app.transport.middleware.RequestIdentity): `X-Request-ID` is taken from the request
when it is a sane token (1-128 of `A-Za-z0-9._:-`), else made (a uuid4); every response carries it, and every log
line written while the request is handled names it (a contextvar read by a logging filter).

Tracing is off unless an OpenTelemetry exporter is configured with the standard variables (`OTEL_TRACES_EXPORTER`
= otlp or console, or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`): then each request is a server span, a child of the
caller's `traceparent`, with child spans for tokenization, queue wait and the model forward. Off, nothing of
OpenTelemetry is imported and each request pays one contextvar set and one header.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def accepted_request_id(given: str) -> str:
    """The caller's request id when it is a sane token (it ends up in logs and headers), else a new uuid4: the one
    rule for every protocol (HTTP's X-Request-ID header, gRPC's x-request-id metadata)."""
    return given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class Tracer:
    """The spans paraserve writes, over an OpenTelemetry tracer; `Tracer(None)` is the no-op used when tracing is off."""

    def __init__(self, provider: Any | None) -> None:
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("paraserve") if provider is not None else None

    @classmethod
    def from_environment(cls) -> Tracer:
        """On when the standard OTEL_* variables configure an exporter; off (no import, no cost) otherwise."""
        exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if exporter in ("", "none") and not endpoint:
            return cls(None)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "paraserve")}))
        if exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: OTEL_EXPORTER_OTLP_*
        return cls(provider)

    @contextmanager
    def server_span(self, scope: dict[str, Any], rid: str) -> Iterator[Any]:
        """An HTTP request's span, a child of the caller's W3C traceparent; yields None when tracing is off."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"], "paraserve.request_id": rid}
        with self.incoming_span(f"{scope['method']} {scope['path']}", carrier, attributes) as span:
            yield span

    @contextmanager
    def incoming_span(self, name: str, carrier: dict[str, str], attributes: dict[str, Any]) -> Iterator[Any]:
        """A server span for a call of any protocol, a child of the W3C trace context in `carrier`; None when off."""
        if self._tracer is None:
            yield None
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier)
        with self._tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes) as span:
            yield span

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child span of the current one around a block (no-op when tracing is off)."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, attributes={"paraserve.request_id": request_id.get() or "", **attributes}):
            yield

    def record(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A child span of the current one for an interval already over (queue wait, the forward on a worker thread)."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(name, start_time=start_ns, attributes={"paraserve.request_id": request_id.get() or "", **attributes})
        span.end(end_time=end_ns)


def now_ns() -> int:
    return time.time_ns()
