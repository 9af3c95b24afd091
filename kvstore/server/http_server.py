"""The HTTP edge of a node: aiohttp's low-level server with bounded request heads, timeouts and connections.

``EdgeServer`` stands in for ``web.Server`` and makes every connection an ``EdgeConnection`` (aiohttp's
``RequestHandler`` with a few overrides). Requests that parse reach the router unchanged.

- Request heads are bounded by aiohttp's parser limits (``limits.max_request_line_bytes``,
  ``max_header_bytes``, ``max_headers``). A request the parser rejects gets the JSON error shape with a
  fixed message (aiohttp's own answer quotes the offending bytes): 414 for a long request line, 431 for a
  large header or too many, 400 for anything else; then the connection closes. It is counted
  (``kvstore_http_malformed_requests{kind}``) and logged at WARNING without traceback, through a
  ``LogBudget`` so that a flood cannot flood the log. A parser error inside a body that a handler is
  reading fails that read with ``bad_request`` (aiohttp would leave the handler waiting for the body).
- A request head must be complete ``timeouts.header_timeout_ms`` after its first byte (after the
  connection opened, for a connection's first request): a slow one is answered 408 and closed, a
  connection that sent nothing is closed. aiohttp's keep-alive timer closes a connection idle for
  ``timeouts.keepalive_idle_timeout_ms`` after its last response.
- Up to ``limits.max_client_connections`` connections are served in full. Past it a few more are
  admitted as *reserved* (``ConnectionBounds.reserved``): on those only ``POST /peer``, ``/health`` and
  ``/metrics`` are served, anything else is answered 503 ``overloaded`` (definite, unlike a reset) and
  the connection closes. Past that, a connection gets the same 503 and is closed at once. So a node
  flooded by clients still hears its peers and its health checks.
- File descriptors bound the same classes. The kernel gives an accepted socket the lowest free fd, so
  its number is a lower bound of the fds in use, whatever holds them. Within ``FD_RESERVE`` plus one per
  peer of RLIMIT_NOFILE a socket is refused, within that plus ``reserved`` it is admitted as reserved at
  most. The fds kept stay free for storage, logs and outbound peer sockets, and connections do not drive
  accept() into EMFILE, where libuv (uvloop) accepts and drops every pending connection, peers'
  included, and logs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import resource
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from kvstore.config import ClusterConfig, Limits
from kvstore.errors import ErrorCode, KvError
from kvstore.server.http_codec import error_response
from kvstore.server.metrics import NodeMetrics
from kvstore.server.peer import PEER_PATH
from kvstore.server.router import target_path

log = logging.getLogger(__name__)

LOG_WINDOW_S = 10.0
LOG_LINES_PER_WINDOW = 10
# aiohttp's default is 10 s: a client trickling a body it was already refused for would hold the connection.
LINGER_S = 2.0
# Fds never given to inbound connections: storage files, logs, the event loop; plus one per peer for
# outbound peer sockets.
FD_RESERVE = 64
# Reserved connections: health checks and scrapes, plus two per peer (its sender and a reconnect).
RESERVED_CONNECTIONS = 16
RESERVED_PATHS = frozenset({PEER_PATH, "/health", "/metrics"})

_NO_DEADLINE = math.inf

CLIENT = "client"
RESERVED = "reserved"

# The message both parsers raise past max_headers; the type alone (BadHttpMessage) says nothing.
_TOO_MANY_HEADERS = "Too many headers received"
_BODY_FRAMING = "bad_body_framing"
_BODY_FRAMING_MESSAGE = "the body framing (Content-Length or chunked encoding) is malformed"
# Checked in order: BadHttpMethod is a BadStatusLine.
_PARSE_ERROR_KINDS: tuple[tuple[type[HttpProcessingError], str, str], ...] = (
    (BadHttpMethod, "bad_method", "the request line has an invalid method"),
    (BadStatusLine, "bad_request_line", "the request line is malformed"),
    (InvalidURLError, "bad_url", "the request target is not a valid URL"),
    (InvalidHeader, "bad_header", "a header is malformed"),
    (PayloadEncodingError, _BODY_FRAMING, _BODY_FRAMING_MESSAGE),
)
_MALFORMED = "malformed"
_CLIENT_LIMIT_ERROR = KvError(ErrorCode.OVERLOADED, "the node is at its connection limit; retry later")


def _raw_response(error: KvError) -> bytes:
    """A whole HTTP response, written straight to a transport where no aiohttp response can be made."""
    status = error.code.http_status
    body = json.dumps(error.to_json(), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REFUSED_RESPONSE = _raw_response(_CLIENT_LIMIT_ERROR)
_HEAD_TIMEOUT_RESPONSE = _raw_response(
    KvError(ErrorCode.REQUEST_TIMEOUT, "the request line and headers did not arrive in time")
)


def _peer_text(peername: object) -> str:
    if isinstance(peername, tuple):
        return f"{peername[0]}:{peername[1]}"
    return str(peername)


class LogBudget:
    """Log lines of one kind, at most ``lines`` per ``window_s``; the rest are counted and reported in one
    line when the window ends."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        what: str,
        level: int,
        lines: int,
        window_s: float,
    ) -> None:
        self._loop = loop
        self._what = what
        self._level = level
        self._lines = lines
        self._window_s = window_s
        self._window_end_s = -math.inf
        self._used = 0
        self._suppressed = 0
        self._flush: asyncio.TimerHandle | None = None

    def log(self, msg: str, *args: object) -> None:
        now_s = self._loop.time()
        if now_s >= self._window_end_s:
            self._window_end_s = now_s + self._window_s
            self._used = 0
        if self._used < self._lines:
            self._used += 1
            log.log(self._level, msg, *args)
            return
        self._suppressed += 1
        if self._flush is None:
            self._flush = self._loop.call_at(self._window_end_s, self.flush)

    def flush(self) -> None:
        """Report the lines suppressed so far; called when the window ends and when the server stops."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._suppressed:
            log.log(
                self._level, "suppressed %d more %s in the last %.0f s", self._suppressed, self._what, self._window_s
            )
            self._suppressed = 0


@dataclass(frozen=True)
class ConnectionBounds:
    clients: int
    reserved: int
    # A socket with an fd at or above this is admitted as reserved at most; at or above fd_ceiling, refused.
    client_fd_ceiling: int
    fd_ceiling: int
    # RLIMIT_NOFILE's soft limit when the server was made.
    fd_limit: int

    @staticmethod
    def of(config: ClusterConfig) -> ConnectionBounds:
        peers = len(config.nodes) - 1
        reserved = RESERVED_CONNECTIONS + 2 * peers
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_limit = sys.maxsize if soft == resource.RLIM_INFINITY else soft
        fd_ceiling = fd_limit - FD_RESERVE - peers
        return ConnectionBounds(
            config.limits.max_client_connections, reserved, fd_ceiling - reserved, fd_ceiling, fd_limit
        )


class EdgeServer(web.Server):
    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        config: ClusterConfig,
        metrics: NodeMetrics,
        node_id: str,
    ) -> None:
        limits, timeouts = config.limits, config.timeouts
        super().__init__(
            handler,
            access_log=None,
            keepalive_timeout=timeouts.keepalive_idle_timeout_ms / 1000,
            max_line_size=limits.max_request_line_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            # Bodies reach the routes as sent: gzip and deflate are inflated by kvstore's own bounded code.
            auto_decompress=False,
            # After an answer given before the whole body came (413, or 408 for a body too slow), aiohttp
            # reads and discards the rest for this long so the client sees the answer, then closes.
            lingering_time=LINGER_S,
        )
        self.metrics = metrics
        self.header_timeout_ms = timeouts.header_timeout_ms
        self.header_timeout_s = timeouts.header_timeout_ms / 1000
        self.bounds = ConnectionBounds.of(config)
        self.clients_open = 0
        self.reserved_open = 0
        self._limits = limits
        self._parse_errors = _parse_errors(limits)
        self.malformed_log = LogBudget(
            self._loop, "malformed-request lines", logging.WARNING, LOG_LINES_PER_WINDOW, LOG_WINDOW_S
        )
        self.refusal_log = LogBudget(self._loop, "refusal lines", logging.WARNING, LOG_LINES_PER_WINDOW, LOG_WINDOW_S)
        self.timeout_log = LogBudget(
            self._loop, "header-timeout lines", logging.INFO, LOG_LINES_PER_WINDOW, LOG_WINDOW_S
        )
        b = self.bounds
        log.info(
            "node %s serves %d client connections and %d reserved for peers and health checks; sockets from fd %d "
            "are reserved only, from fd %d refused (RLIMIT_NOFILE %d)",
            node_id,
            b.clients,
            b.reserved,
            b.client_fd_ceiling,
            b.fd_ceiling,
            b.fd_limit,
        )
        if b.client_fd_ceiling < b.clients:
            log.warning(
                "node %s: RLIMIT_NOFILE %d leaves room for fewer than limits.max_client_connections=%d client "
                "connections (sockets stop at fd %d); raise it (ulimit -n) to serve them all",
                node_id,
                b.fd_limit,
                b.clients,
                b.client_fd_ceiling,
            )

    def __call__(self) -> RequestHandler:
        return EdgeConnection(self, loop=self._loop, **self._kwargs)

    async def shutdown(self, timeout: float | None = None) -> None:
        await super().shutdown(timeout)
        for budget in (self.malformed_log, self.refusal_log, self.timeout_log):
            budget.flush()

    def open_connections(self) -> dict[str, int]:
        return {CLIENT: self.clients_open, RESERVED: self.reserved_open}

    def classify(self, exc: HttpProcessingError) -> tuple[str, KvError]:
        """The metrics kind and the answer for a parser error; never any of the request's bytes."""
        if isinstance(exc, LineTooLong):
            # The limit it names is the only thing that tells the request line from a header.
            kind = "request_line_too_long" if exc.args[1] == self._limits.max_request_line_bytes else "header_too_large"
        elif exc.message == _TOO_MANY_HEADERS:
            kind = "too_many_headers"
        else:
            kind = next((k for cls, k, _ in _PARSE_ERROR_KINDS if isinstance(exc, cls)), _MALFORMED)
        return kind, self._parse_errors[kind]

    def report_malformed(self, kind: str, peername: object, outcome: str) -> None:
        self.metrics.malformed(kind)
        self.malformed_log.log("malformed request from %s (%s): %s", _peer_text(peername), kind, outcome)

    def refuse_connection(self, transport: asyncio.Transport, fd: int) -> None:
        reason = "fd_limit" if fd >= self.bounds.fd_ceiling else "connection_limit"
        self.metrics.refused(reason)
        self.metrics.error(ErrorCode.OVERLOADED.value)
        self.refusal_log.log(
            "refused a connection from %s (%s): %d client and %d reserved connections open, socket fd %d, "
            "RLIMIT_NOFILE %d",
            _peer_text(transport.get_extra_info("peername")),
            reason,
            self.clients_open,
            self.reserved_open,
            fd,
            self.bounds.fd_limit,
        )
        transport.write(_REFUSED_RESPONSE)
        transport.close()

    def refuse_request(self, peername: object, fd: int) -> web.StreamResponse:
        self.metrics.refused("client_limit")
        self.metrics.error(ErrorCode.OVERLOADED.value)
        self.refusal_log.log(
            "answered 503 to %s: %d client connections open (limits.max_client_connections=%d), socket fd %d "
            "(client sockets stop at fd %d, RLIMIT_NOFILE %d)",
            _peer_text(peername),
            self.clients_open,
            self.bounds.clients,
            fd,
            self.bounds.client_fd_ceiling,
            self.bounds.fd_limit,
        )
        response = error_response(_CLIENT_LIMIT_ERROR)
        response.force_close()
        return response


def _parse_errors(limits: Limits) -> dict[str, KvError]:
    errors = {kind: KvError(ErrorCode.BAD_REQUEST, text) for _, kind, text in _PARSE_ERROR_KINDS}
    errors[_MALFORMED] = KvError(ErrorCode.BAD_REQUEST, "the request is not valid HTTP/1.1")
    errors["request_line_too_long"] = KvError(
        ErrorCode.URI_TOO_LONG, f"the request line is longer than {limits.max_request_line_bytes} bytes"
    )
    errors["header_too_large"] = KvError(
        ErrorCode.HEADERS_TOO_LARGE, f"a header line is longer than {limits.max_header_bytes} bytes"
    )
    errors["too_many_headers"] = KvError(ErrorCode.HEADERS_TOO_LARGE, f"more than {limits.max_headers} headers")
    return errors


_parse = RequestHandler.data_received


class EdgeConnection(RequestHandler):
    """One connection: admission, the request-head clock, and JSON answers to parser errors."""

    __slots__ = ("_admission", "_edge", "_fd", "_head_deadline_s", "_head_started", "_head_timer")

    def __init__(self, edge: EdgeServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(edge, loop=loop, **kwargs)
        self._edge = edge
        # CLIENT or RESERVED once admitted; None for a refused connection (and after connection_lost).
        self._admission: str | None = None
        self._fd = -1
        # When the pending request head must be complete; inf while none is pending.
        self._head_deadline_s = _NO_DEADLINE
        # Whether any byte of the pending head arrived (answer 408) or not (just close).
        self._head_started = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        edge = self._edge
        bounds = edge.bounds
        fd = self._fd = transport.get_extra_info("socket").fileno()
        if edge.clients_open < bounds.clients and fd < bounds.client_fd_ceiling:
            edge.clients_open += 1
            self._admission = CLIENT
        elif edge.reserved_open < bounds.reserved and fd < bounds.fd_ceiling:
            edge.reserved_open += 1
            self._admission = RESERVED
            self._request_handler = self._serve_reserved
        else:
            edge.refuse_connection(cast(asyncio.Transport, transport), fd)
            return
        super().connection_made(transport)
        self._head_deadline_s = self._loop.time() + edge.header_timeout_s
        self._head_timer = self._loop.call_at(self._head_deadline_s, self._head_clock)

    def connection_lost(self, exc: BaseException | None) -> None:
        admission, self._admission = self._admission, None
        if admission is None:
            return
        if admission == CLIENT:
            self._edge.clients_open -= 1
        else:
            self._edge.reserved_open -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The base method by name, not super(): this runs for every read, and super() costs more.
        _parse(self, data)
        messages = self._messages
        if messages:
            # A head is complete (or failed to parse): no head is pending.
            self._head_deadline_s = _NO_DEADLINE
            self._head_started = False
            if self._waiter is None and isinstance(messages[-1][0], _ErrInfo):
                self._fail_open_body()
        elif self._waiter is not None:
            # Idle, waiting for a request, and part of one arrived.
            self._head_started = True
            if self._head_deadline_s == _NO_DEADLINE:
                self._head_deadline_s = self._loop.time() + self._edge.header_timeout_s
                if self._head_timer is None:
                    self._head_timer = self._loop.call_at(self._head_deadline_s, self._head_clock)

    def _head_clock(self) -> None:
        # One timer per connection, moved only when it fires, so the hot path sets a float and no timer.
        self._head_timer = None
        deadline_s = self._head_deadline_s
        if deadline_s == _NO_DEADLINE or self.transport is None:
            return
        if self._loop.time() < deadline_s:
            self._head_timer = self._loop.call_at(deadline_s, self._head_clock)
            return
        edge = self._edge
        edge.metrics.header_timeout()
        peer = _peer_text(self.peername)
        if self._head_started:
            edge.metrics.error(ErrorCode.REQUEST_TIMEOUT.value)
            self.transport.write(_HEAD_TIMEOUT_RESPONSE)
            edge.timeout_log.log(
                "request head from %s not complete within %d ms: answered 408 and closed", peer, edge.header_timeout_ms
            )
        else:
            edge.timeout_log.log(
                "connection from %s sent no request within %d ms: closed", peer, edge.header_timeout_ms
            )
        self.force_close()

    def _fail_open_body(self) -> None:
        """The parser failed while a handler is busy: if a body is still being read, the error is in it.

        That body's reader fails (the router answers 400) instead of the error being queued as a second
        answer behind a handler that would wait for the body forever.
        """
        messages = self._messages
        if len(messages) > 1:
            payload = messages[-2][1]
        elif self._current_request is not None:
            payload = self._current_request.content
        else:
            return
        if payload.is_eof():
            # The error is in the next request's head: answered in its turn.
            return
        messages.pop()
        self._edge.report_malformed(_BODY_FRAMING, self.peername, "the request fails and the connection closes")
        # A new exception each time: one instance raised again and again would grow its traceback.
        payload.set_exception(KvError(ErrorCode.BAD_REQUEST, _BODY_FRAMING_MESSAGE))
        payload.feed_eof()
        self.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            # A handler raised past the router: aiohttp's 500, logged with its traceback as a bug should be.
            return super().handle_error(request, status, exc, message)
        edge = self._edge
        kind, error = edge.classify(exc)
        edge.report_malformed(kind, self.peername, f"answered {error.code.http_status} and closed")
        edge.metrics.error(error.code.value)
        # Nothing more is parsed on this connection.
        self.close()
        response = error_response(error)
        response.force_close()
        return response

    async def _serve_reserved(self, request: web.BaseRequest) -> web.StreamResponse:
        path = target_path(request)
        if path not in RESERVED_PATHS:
            return self._edge.refuse_request(self.peername, self._fd)
        response = await self._edge.request_handler(request)
        if path != PEER_PATH:
            # Free the slot for the next peer or health check.
            response.force_close()
        return response
