"""uvicorn's h11 HTTP/1.1 protocol with a bounded cost per connection: what a client can hold, and for how long.

Why h11 and not httptools (uvicorn[standard]'s default): httptools parses every byte a client sends and queues
pipelined requests without limit (ten sockets pipelining `GET /healthz` without reading took RSS from 0.9 to 7.8 GB)
and has no header size limit (four 100 MB headers: 24 s of CPU). h11 handles one request at a time per connection,
stops reading while it is answered (so at most one socket read, 256 KiB, waits behind it), and caps the header
block. Neither closes a connection that never sends, or sends its headers or body a byte at a time; this class
does, answering in the service's one error shape where a response is still possible:

- more than `max_connections` open at once: 503 `too_many_connections` and close (the fd limit is never reached);
- no complete header block `header_timeout_s` after the connection opened (or after the first byte of a following
  request): 408 `request_timeout` if some bytes came, else a silent close (`idle`);
- a header block over `max_header_bytes`: 431 `headers_too_large`; malformed HTTP: 400 `bad_request` (JSON, not
  uvicorn's text/plain), both counted;
- a body that stops for `body_timeout_s` between bytes: 408, and the request's handler sees a disconnect;
- a client that stops reading its responses for `send_timeout_s`: closed;
- more than `max_pipelined` requests waiting behind one another: 503 and close.

Every server-side close is counted in paraserve_connections_closed_total{reason}.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app import errors
from app.http_errors import error_body, headers_for, kind_of
from app.metrics import Metrics


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_header_bytes: int
    max_pipelined: int


def raw_error(exc: errors.ServiceError) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for answers outside any request cycle."""
    kind = kind_of(exc)
    body = json.dumps(error_body(exc.message, kind.error_type)).encode()
    reason = HTTPStatus(kind.status).phrase
    lines = [f"HTTP/1.1 {kind.status} {reason}", "content-type: application/json", f"content-length: {len(body)}", "connection: close"]
    lines += [f"x-error-type: {kind.error_type}"] + [f"{k.lower()}: {v}" for k, v in headers_for(exc).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits, metrics: Metrics) -> type[H11Protocol]:
    """The protocol class for uvicorn.Config(http=...), bound to these limits and metrics."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "metrics": metrics})


class GuardedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]
    metrics: ClassVar[Metrics]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_reason = ""
        self._received_any = False
        self._waiting_for_headers = True
        self._pipelined = 0
        self._refused = False

    # ---- connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        too_many = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if too_many:
            self._refused = True
            self.connections.discard(self)
            self._close_with(errors.TooManyConnections("too many open connections; retry shortly"), "too_many_connections")
            return
        self.metrics.connections_open.set(len(self.connections))
        self._arm(self.limits.header_timeout_s, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self.metrics.connections_open.set(len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._received_any = True
        if self._waiting_for_headers:
            if self._timer is None:
                self._arm(self.limits.header_timeout_s, "header")  # the next request's headers: a deadline from its first byte
            # h11 caps only a header block still incomplete after a read; one that arrives whole in a read is not.
            pending = self.conn.trailing_data[0] + data
            if len(pending) > self.limits.max_header_bytes and b"\r\n\r\n" not in pending[: self.limits.max_header_bytes + 4]:
                self._headers_too_large()
                return
        super().data_received(data)
        if self.transport.is_closing():
            return
        their = self.conn.their_state
        if self._waiting_for_headers and their is not h11.IDLE:
            self._waiting_for_headers = False  # a complete header block was parsed
            self._disarm()
        if their is h11.SEND_BODY:
            self._arm(self.limits.body_timeout_s, "body")  # a gap between body bytes, measured from this one
        elif their is h11.DONE and self._timer_reason == "body":
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers malformed HTTP in text/plain; here it is the one JSON shape, 431 for oversized headers."""
        if self.conn.their_state is h11.ERROR and len(self.conn.trailing_data[0]) >= self.limits.max_header_bytes:
            self._headers_too_large()
        else:
            self._close_with(errors.BadRequest("malformed HTTP request"), "bad_request")

    def _headers_too_large(self) -> None:
        self._close_with(errors.HeadersTooLarge(f"request headers exceed {self.limits.max_header_bytes} bytes"), "headers_too_large")

    def on_response_complete(self) -> None:
        self._waiting_for_headers = True
        buffered, _ = self.conn.trailing_data
        self._pipelined = self._pipelined + 1 if buffered else 0
        if self._pipelined > self.limits.max_pipelined:
            self._close_with(errors.TooManyConnections(f"more than {self.limits.max_pipelined} pipelined requests"), "pipelined")
            return
        super().on_response_complete()
        if buffered and not self.transport.is_closing() and self._waiting_for_headers and self._timer is None:
            self._arm(self.limits.header_timeout_s, "header")

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.metrics.connections_closed.labels(reason="keep_alive").inc()
        super().timeout_keep_alive_handler()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm(self.limits.send_timeout_s, "send")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._timer_reason == "send":
            self._disarm()

    def shutdown(self) -> None:
        # A body still arriving at shutdown gets one more second, not the whole grace period.
        if self.conn.their_state is h11.SEND_BODY:
            self._arm(min(1.0, self.limits.body_timeout_s), "body")
        elif self._waiting_for_headers and (self.cycle is None or self.cycle.response_complete):
            self._disarm()
        super().shutdown()

    # ---- timers ---------------------------------------------------------------------------------------------

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer_reason = reason
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_reason = None, ""

    def _expired(self) -> None:
        reason, self._timer = self._timer_reason, None
        if self.transport.is_closing():
            return
        if reason == "send":
            self.metrics.connections_closed.labels(reason="send_stalled").inc()
            self.transport.abort()
        elif reason == "body":
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                cycle.disconnected = True  # the handler's next receive() is http.disconnect; its answer goes nowhere
                cycle.message_event.set()
            started = cycle is not None and cycle.response_started
            self._close_with(
                errors.RequestTimeout(f"no request body bytes for {self.limits.body_timeout_s:g} s"), "body_timeout", respond=not started
            )
        elif not self._received_any:
            self.metrics.connections_closed.labels(reason="idle").inc()
            self.transport.close()
        else:
            message = f"request headers not complete within {self.limits.header_timeout_s:g} s"
            self._close_with(errors.RequestTimeout(message), "header_timeout")

    def _close_with(self, exc: errors.ServiceError, reason: str, *, respond: bool = True) -> None:
        self._disarm()
        self.metrics.connections_closed.labels(reason=reason).inc()
        self.metrics.errors.labels(error_type=kind_of(exc).error_type).inc()
        if respond and not self.transport.is_closing():
            self.transport.write(raw_error(exc))
        self.transport.close()
