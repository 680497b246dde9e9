"""uvicorn's h11 HTTP/1.1 protocol with a bounded cost per connection: what a client can hold, and for how long.

Why h11 with these guards, and not httptools or granian: measured side by side under the same attacks
(bench/http_servers.py, docs/reliability.md); h11 handles one request at a time per connection, stops reading while
it is answered, and caps the header block; what it leaves to the server is added here. Every limit is a setting
(app/shared/config.py) and every server-side close is counted in paraserve_connections_closed_total{reason}:

- connections: more than `max_connections` open at once, or `max_connections_per_client` from one peer address, or
  a peer over its share once three quarters are taken (app/transport/budget.py): 503 `too_many_connections` and
  close (reasons too_many_connections, client_connections);
- headers: no complete header block `header_timeout_s` after the connection opened (or after the first byte of a
  following request): 408 if some bytes came (header_timeout), else a silent close (idle); a block over
  `max_header_bytes`: 431 (headers_too_large); malformed HTTP: 400 in the JSON error shape (bad_request);
- framing (RFC 9112 section 6.1): Content-Length with Transfer-Encoding, or Transfer-Encoding in HTTP/1.0: 400 and
  close; a chunked body of more than `max_body_chunks` chunks: 400 and close (framing). Each chunk costs a parse
  however little it carries: 900,000 one-byte chunks under 1 MiB of data stalled the event loop for 5.7 s;
- body: not complete `body_timeout_s` after its headers (body_timeout), or averaging under `min_body_rate` bytes/s
  once `body_rate_grace_s` has passed (body_too_slow): 408 and close, and the handler sees a disconnect. A gap
  timeout alone let a body dripped a byte every 5 s hold its connection forever;
- a client that stops reading its responses for `send_timeout_s`: closed (send_stalled); more than
  `max_pipelined` requests waiting behind one another: 503 and close (pipelined).

Every refusal is answered once, then the connection is half-closed and what the client still sends is read and
dropped for at most LINGER_S (or LINGER_BYTES), then it is closed, whatever the client does: one close path
(`_close_with`), one linger timer that no other timer replaces, nothing parsed after the refusal. (A 413 by
Content-Length once left h11 expecting the body: the body timer replaced the linger, and 1,000 silent sockets held
every connection slot for 60 s.)

Shutdown answers what it accepted: at the stop signal, connections still in the listen backlog are accepted and the
listener closes (app/transport/server.py, DrainingServer);
a request whose handler runs is answered (its response says Connection: close); a body still arriving gets one more
second; a connection between requests is read for one more second and a request arriving there is answered 503
`shutting_down` with Connection: close (reason draining). A request the server received any byte of and closed
without answering is counted in paraserve_requests_unanswered_total and in the last log line (0 expected).

These classes override uvicorn internals (H11Protocol's handlers, Server.shutdown): uvicorn is pinned to the range
tests/api/test_uvicorn_contract.py checks. uvicorn's own WARNING for each malformed request is dropped (a client's
mistake is one debug line here, counted by reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.shared import errors
from app.shared.metrics import Metrics
from app.transport.budget import ConnectionBudget
from app.transport.http_errors import raw_error

log = logging.getLogger(__name__)

DRAIN_READ_S = 1.0  # at shutdown: how long a body, or a connection between requests, is still read
# After an error answer the connection is half-closed and what the client still sends is read and dropped for up to
# LINGER_S (or LINGER_BYTES), then closed: closing a socket with unread bytes makes the kernel send a reset, which can
# destroy the answer before the client reads it (seen: drain 503s lost to requests whose body was still arriving).
LINGER_S = 2.0
LINGER_BYTES = 1 << 20


@dataclass(frozen=True)
class ConnectionLimits:
    max_body_bytes: int
    max_connections: int
    max_connections_per_client: int
    header_timeout_s: float
    body_timeout_s: float
    min_body_rate: float
    body_rate_grace_s: float
    max_body_chunks: int
    send_timeout_s: float
    max_header_bytes: int
    max_pipelined: int


@dataclass
class Drain:
    """Shared by every connection of one server: whether it is shutting down, and what the drain did."""

    started_at: float | None = None
    refused: int = 0  # requests answered 503 shutting_down by the protocol during the drain
    unanswered: int = 0  # requests received (at least one byte) and closed without an answer, since start

    @property
    def active(self) -> bool:
        return self.started_at is not None


class _QuietClientErrors(logging.Filter):
    """uvicorn logs a WARNING for every malformed request before it calls send_400_response (9,847 oversized trailers
    wrote 768 KB); the guarded protocol answers and counts each, so uvicorn's line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


_QUIET = _QuietClientErrors()


class FramingGuard(h11.Connection):
    """h11, plus the framing rules it leaves to the server; a breach raises h11's RemoteProtocolError (uvicorn then
    calls send_400_response), with the domain error kept in `refusal`."""

    def __init__(self, max_chunks: int, max_header_bytes: int, max_body_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_chunks = max_chunks
        self.max_body_bytes = max_body_bytes
        self.refusal: errors.ServiceError | None = None
        self._chunked = False
        self._events = 0

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}  # h11 lowercases header names
            self._chunked, self._events = b"transfer-encoding" in names, 0
            if self._chunked and b"content-length" in names:
                self._refuse("Content-Length with Transfer-Encoding: ambiguous framing (RFC 9112, 6.1)")
            if self._chunked and event.http_version == b"1.0":
                self._refuse("Transfer-Encoding in an HTTP/1.0 request (RFC 9112, 6.1)")
            declared = next((value for name, value in event.headers if name == b"content-length"), b"0")
            if int(declared) > self.max_body_bytes:  # h11 checked it is a number; refused before a byte of the body is read
                self._refuse(f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes}", errors.PayloadTooLarge)
        elif self._chunked and isinstance(event, h11.Data):
            self._events += 1
            if self._events > self.max_chunks:
                self._refuse(f"request body in more than {self.max_chunks} chunks: send larger chunks, or a Content-Length")
        return event

    def _refuse(self, message: str, kind: type[errors.ServiceError] = errors.BadRequest) -> None:
        self.refusal = kind(message)
        raise h11.RemoteProtocolError(message)


def guarded_protocol(limits: ConnectionLimits, metrics: Metrics) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), bound to these limits, metrics, a fresh Drain and budget."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # idempotent: a logger holds a filter once
    budget = ConnectionBudget(limits.max_connections, limits.max_connections_per_client)
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "metrics": metrics, "drain": Drain(), "budget": budget})


class GuardedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]
    metrics: ClassVar[Metrics]
    drain: ClassVar[Drain]
    budget: ClassVar[ConnectionBudget]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = FramingGuard(self.limits.max_body_chunks, self.limits.max_header_bytes, self.limits.max_body_bytes)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_reason = ""
        self._closing = False  # answered a refusal (or closing): nothing more is parsed, no timer but the linger
        self._received_any = False
        self._waiting_for_headers = True
        self._pipelined = 0
        self._refused = False
        self._peer: str | None = None
        self._peer_left = False
        self._request_bytes = 0  # bytes of a request not answered yet (0 between requests)
        self._body_started = 0.0
        self._body_bytes = 0
        self._body_deadline = 0.0
        self._linger_left = -1  # bytes still to read and drop before closing; -1: not lingering

    # ---- connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else ""
        why = self.budget.take(peer)
        if why == "too_many_connections":
            self._refuse(errors.TooManyConnections("too many open connections; retry shortly"), why)
            return
        if why is not None:
            self._refuse(errors.TooManyConnections("too many open connections from your address; retry shortly"), why)
            return
        self._peer = peer
        self.metrics.connections_open.set(self.budget.open)
        if self.drain.active:  # accepted from the backlog at shutdown: read what the client sent, answer 503
            self._arm(DRAIN_READ_S, "drain")
        else:
            self._arm(self.limits.header_timeout_s, "header")

    def _refuse(self, exc: errors.ServiceError, reason: str) -> None:
        self._refused = True
        self.connections.discard(self)
        self._close_with(exc, reason, linger=False)  # over a limit: its slot is not held any longer

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._peer is not None:
            self.budget.release(self._peer)
            self._peer = None
        if exc is None and not self._peer_left and self._unanswered():
            self.drain.unanswered += 1
            self.metrics.requests_unanswered.inc()
            log.warning("closed a connection holding %d bytes of an unanswered request", self._request_bytes)
        super().connection_lost(exc)
        self.metrics.connections_open.set(self.budget.open)

    def eof_received(self) -> None:
        self._peer_left = True  # the client closed its side: what it leaves unanswered is its choice
        if self._closing:
            self.transport.close()
            return
        super().eof_received()

    def _unanswered(self) -> bool:
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        return self._request_bytes > 0 and not answering

    def data_received(self, data: bytes) -> None:
        if self._closing:  # answered a refusal and half-closed: read and drop, never parse (e.g. the body after a 413)
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        if self._refused or self.transport.is_closing():
            return
        self._received_any = True
        between = self._waiting_for_headers and (self.cycle is None or self.cycle.response_complete)
        self._request_bytes += len(data)
        if self.drain.active and between:
            self._close_with(errors.ShuttingDown("the server is shutting down; retry on another instance"), "draining")
            return
        if self._waiting_for_headers:
            if self._timer is None:
                self._arm(self.limits.header_timeout_s, "header")  # the next request's headers: a deadline from its first byte
            # h11 caps only a header block still incomplete after a read; one that arrives whole in a read is not.
            pending = self.conn.trailing_data[0] + data
            if len(pending) > self.limits.max_header_bytes and b"\r\n\r\n" not in pending[: self.limits.max_header_bytes + 4]:
                self._headers_too_large()
                return
        elif self.conn.their_state is h11.SEND_BODY:
            self._body_bytes += len(data)
        super().data_received(data)
        if self._closing or self.transport.is_closing():
            return
        their = self.conn.their_state
        if self._waiting_for_headers and their is not h11.IDLE:
            self._waiting_for_headers = False  # a complete header block was parsed
            self._disarm()
            if their is h11.SEND_BODY:
                self._start_body_clock()
        elif their is h11.DONE and self._timer_reason == "body":
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers malformed HTTP in text/plain; here it is the one JSON shape, 431 for oversized headers."""
        if isinstance(self.conn.refusal, errors.PayloadTooLarge):
            self._close_with(self.conn.refusal, "body_too_large")
        elif self.conn.refusal is not None:
            self._close_with(self.conn.refusal, "framing")
        elif self.conn.their_state is h11.ERROR and len(self.conn.trailing_data[0]) >= self.limits.max_header_bytes:
            self._headers_too_large()
        else:
            self._close_with(errors.BadRequest("malformed HTTP request"), "bad_request")

    def _headers_too_large(self) -> None:
        self._close_with(errors.HeadersTooLarge(f"request headers exceed {self.limits.max_header_bytes} bytes"), "headers_too_large")

    def on_response_complete(self) -> None:
        if self._closing:
            return
        self._waiting_for_headers = True
        buffered, _ = self.conn.trailing_data
        self._request_bytes = len(buffered)  # what is buffered belongs to the next request
        if self.drain.active and not self.transport.is_closing():
            if buffered:  # a request pipelined behind the one just answered
                self._close_with(errors.ShuttingDown("the server is shutting down; retry on another instance"), "draining")
            else:  # answered without Connection: close (it began before the drain): a next request may be on its way
                self._arm(DRAIN_READ_S, "drain")
            return
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
        """The server is draining: answer what this connection holds, read briefly for what is on its way, then close."""
        if self._refused or self._closing or self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:  # a body still arriving: one more second, not the whole grace period
            self._body_deadline = min(self._body_deadline, time.monotonic() + DRAIN_READ_S)
            self._arm(max(0.0, min(1.0, self._body_deadline - time.monotonic())), "body")
        elif self.cycle is not None and not self.cycle.response_complete:
            if not self.cycle.response_started:  # its answer will say Connection: close (DrainNotice), then the connection closes
                self.cycle.keep_alive = False
            # else: an answer already under way without that header; on_response_complete reads on for a moment
        elif self._request_bytes:  # part of a next request's headers: answer it now
            self._close_with(errors.ShuttingDown("the server is shutting down; retry on another instance"), "draining")
        elif self._timer_reason != "drain":
            self._arm(DRAIN_READ_S, "drain")  # between requests: a request on its way is still answered

    # ---- timers ---------------------------------------------------------------------------------------------

    def _start_body_clock(self) -> None:
        now = time.monotonic()
        self._body_started, self._body_bytes = now, 0
        self._body_deadline = now + (DRAIN_READ_S if self.drain.active else self.limits.body_timeout_s)
        self._arm(min(1.0, self._body_deadline - now), "body")

    def _arm(self, seconds: float, reason: str) -> None:
        if self._closing and reason != "linger":
            return  # the linger is the last timer of a refused connection: nothing replaces it
        self._disarm()
        self._timer_reason = reason
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._closing and self._timer_reason == "linger" and not self.transport.is_closing():
            return
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
            self._check_body()
        elif reason == "drain":
            self.metrics.connections_closed.labels(reason="draining").inc()
            self.transport.close()
        elif reason == "linger":
            self.transport.close()
        elif not self._received_any:
            self.metrics.connections_closed.labels(reason="idle").inc()
            self.transport.close()
        else:
            message = f"request headers not complete within {self.limits.header_timeout_s:g} s"
            self._close_with(errors.RequestTimeout(message), "header_timeout")

    def _check_body(self) -> None:
        """Once a second while a body arrives: the overall deadline, then the minimum average rate after the grace."""
        if self.conn.their_state is not h11.SEND_BODY:
            return
        now = time.monotonic()
        elapsed = now - self._body_started
        limits = self.limits
        exc: errors.ServiceError | None = None
        if now >= self._body_deadline:
            if self.drain.active:
                exc, reason = errors.ShuttingDown("the server is shutting down; the request body did not arrive in time"), "draining"
            else:
                exc, reason = errors.RequestTimeout(f"request body not complete within {limits.body_timeout_s:g} s"), "body_timeout"
        elif limits.min_body_rate and elapsed >= limits.body_rate_grace_s and not self.flow.read_paused:
            rate = self._body_bytes / elapsed
            if rate < limits.min_body_rate:
                message = f"request body arriving at {rate:.0f} bytes/s, under the minimum of {limits.min_body_rate:g} bytes/s"
                exc, reason = errors.RequestTimeout(message), "body_too_slow"
        if exc is None:
            self._arm(max(0.0, min(1.0, self._body_deadline - now)), "body")
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the handler's next receive() is http.disconnect; its answer goes nowhere
            cycle.message_event.set()
        started = cycle is not None and cycle.response_started
        self._close_with(exc, reason, respond=not started)

    def _close_with(self, exc: errors.ServiceError, reason: str, *, respond: bool = True, linger: bool = True) -> None:
        """The one close path: answer `exc` once (unless a response already began), then end the connection:
        half-close and linger (see LINGER_S) so the answer is not lost to a reset, or close at once when `linger` is
        False. Whatever the client does next, the connection is closed within LINGER_S."""
        if self._closing or self.transport.is_closing():
            return
        self._disarm()
        self._closing = True
        self.metrics.connections_closed.labels(reason=reason).inc()
        self.metrics.errors.labels(error_type=errors.kind_of(exc).error_type).inc()
        log.debug("closing a connection: %s (%s)", reason, exc.message[:200])
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # a handler still waiting for the body sees a disconnect; its answer goes nowhere
            cycle.message_event.set()
        if not respond:
            self.transport.close()
            return
        self.transport.write(raw_error(exc))
        self._request_bytes = 0  # answered
        if isinstance(exc, errors.ShuttingDown):
            self.drain.refused += 1
        if not linger or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_left = LINGER_BYTES
        self.flow.resume_reading()
        self._arm(LINGER_S, "linger")
