"""The HTTP/1.1 edge of a node: an asyncio protocol over llhttp (``httptools``), with bounded request heads and
bodies, timeouts and connection bounds.

Each connection parses requests with ``httptools.HttpRequestParser`` and hands each one, body and all, to the
router; responses go out in request order (pipelining), each in one write. A request reaches a handler only
once it is whole, so no handler ever waits on a slow client.

- Request heads are bounded: the request line by ``limits.max_request_line_bytes`` (414), a header line by
  ``max_header_bytes`` and their number by ``max_headers`` (431), and all head bytes together by what those
  allow, counted as they arrive, so a header that never ends cannot grow the parser's buffer. A request the
  parser rejects gets the JSON error shape with a fixed message, never the offending bytes (400 unless a
  limit says otherwise); then the connection closes. Each is counted (``kvstore_http_malformed_requests{kind}``)
  and logged at WARNING without traceback, through a ``LogBudget`` so that a flood cannot flood the log.
- A body is bounded by its route's ``max_body_bytes`` (as sent; the route inflates a compressed body within
  its own limit): a declared ``Content-Length`` over it is answered 413 before any of the body is read, a
  chunked body as soon as it passes it. ``Expect: 100-continue`` is answered when the request is next in
  line and its declared length fits.
- Deadlines, one timer per connection moved only when it fires: a request head must be complete
  ``timeouts.header_timeout_ms`` after its first byte (after the connection opened, for a connection's first
  request), or it is answered 408 and closed (a connection that sent nothing is just closed); a body must be
  complete ``timeouts.body_timeout_ms`` after its head (408); a keep-alive connection with nothing to do is
  closed after ``timeouts.keepalive_idle_timeout_ms``, and so is one whose client reads none of its answers
  for that long.
- After an answer that ends a connection early (413, 408, a malformed request), the rest of what the client
  sends is read and dropped for ``LINGER_S`` after our side is shut for writing, so the client reads the
  answer instead of a reset; then the connection closes. A lingering connection no longer takes a slot.
- Up to ``limits.max_client_connections`` connections are served in full. Past it a few more are admitted as
  *reserved* (``ConnectionBounds.reserved``): on those only ``POST /peer``, ``/health`` and ``/metrics`` are
  served, anything else is answered 503 ``overloaded`` (definite, unlike a reset) and the connection closes.
  Past that, a connection gets the same 503 and is closed at once, unless a reserved connection has sent
  nothing yet: the oldest such gives up its slot (``refused{reason="silent_reserved"}``), so silent sockets
  cannot keep a peer out for a header timeout. So a node flooded by clients still hears its peers and its
  health checks.
- File descriptors bound the same classes. The kernel gives an accepted socket the lowest free fd, so its
  number is a lower bound of the fds in use, whatever holds them. Within ``FD_RESERVE`` plus one per peer of
  RLIMIT_NOFILE a socket is refused, within that plus ``reserved`` it is admitted as reserved at most. The
  fds kept stay free for storage, logs and outbound peer sockets, and connections do not drive accept() into
  EMFILE, where libuv (uvloop) accepts and drops every pending connection, peers' included, and logs nothing.
- Reading stops while ``MAX_QUEUED_REQUESTS`` parsed requests wait their turn or the client is not reading
  its responses (the transport's write buffer is over its high-water mark), so a pipelining client that
  never reads cannot make the node hold more than that.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict

from kvstore.config import ClusterConfig, Limits
from kvstore.errors import ErrorCode, KvError
from kvstore.server.http_codec import error_response
from kvstore.server.http_message import (
    DateHeader,
    Request,
    Response,
    StreamResponse,
    chunk,
    serialize,
    serialize_stream_head,
)
from kvstore.server.metrics import NodeMetrics
from kvstore.server.peer import PEER_PATH
from kvstore.server.router import target_path

log = logging.getLogger(__name__)

LOG_WINDOW_S = 10.0
LOG_LINES_PER_WINDOW = 10
# How long the rest of a request answered early is read and dropped before the connection closes.
LINGER_S = 2.0
# Fds never given to inbound connections: storage files, logs, the event loop; plus one per peer for
# outbound peer sockets.
FD_RESERVE = 64
# Reserved connections: health checks and scrapes, plus two per peer (its sender and a reconnect).
RESERVED_CONNECTIONS = 16
RESERVED_PATHS = frozenset({PEER_PATH, "/health", "/metrics"})
# A request's bytes on the wire may be this many times its body's limit (chunk-size lines around small
# chunks), plus its head and this much for a chunked body's trailer, before it is refused.
CHUNKED_OVERHEAD_FACTOR = 8
TRAILER_BYTES = 64 * 1024
# The most one read hands over (uvloop reads up to 256 KiB at a time).
READ_BYTES = 256 * 1024
# Parsed requests a connection holds waiting for their turn before it stops reading.
MAX_QUEUED_REQUESTS = 16
# The most bytes parsed at once: a read is parsed in slices this big, so that it queues at most about this
# many bytes' worth of requests past MAX_QUEUED_REQUESTS.
FEED_BYTES = 4096

_NO_DEADLINE = math.inf

CLIENT = "client"
RESERVED = "reserved"

# Connection phases, each with its own deadline.
_IDLE = 0  # nothing received of a next request, nothing to answer
_HEAD = 1  # part of a request head received
_BODY = 2  # a head received, its body not yet whole
_BUSY = 3  # requests being answered; no deadline (the node bounds how long a request takes)

_BODY_FRAMING = "bad_body_framing"
_PARSE_ERROR_MESSAGES = {
    "bad_method": "the request line has an invalid method",
    "bad_request_line": "the request line is malformed",
    "bad_url": "the request target is not a valid URL",
    "bad_header": "a header is malformed",
    _BODY_FRAMING: "the body framing (Content-Length or chunked encoding) is malformed",
    "malformed": "the request is not valid HTTP/1.1",
    "bad_version": "only HTTP/1.1 and HTTP/1.0 are served",
}
_SERVED_VERSIONS = frozenset({"1.1", "1.0"})
_CLIENT_LIMIT_ERROR = KvError(ErrorCode.OVERLOADED, "the node is at its connection limit; retry later")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
# Content codings a body-size error names as such (never a client's own bytes).
_NAMED_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate"})


# Written at accept, before a connection is parsed at all: no Date line, every other answer's shape.
_REFUSED_RESPONSE = serialize(error_response(_CLIENT_LIMIT_ERROR), b"", _CLOSE)


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


def _parse_errors(limits: Limits) -> dict[str, KvError]:
    errors = {kind: KvError(ErrorCode.BAD_REQUEST, text) for kind, text in _PARSE_ERROR_MESSAGES.items()}
    errors["request_line_too_long"] = KvError(
        ErrorCode.URI_TOO_LONG, f"the request line is longer than {limits.max_request_line_bytes} bytes"
    )
    errors["header_too_large"] = KvError(
        ErrorCode.HEADERS_TOO_LARGE, f"a header line is longer than {limits.max_header_bytes} bytes"
    )
    errors["too_many_headers"] = KvError(ErrorCode.HEADERS_TOO_LARGE, f"more than {limits.max_headers} headers")
    return errors


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: the request is answered ``error`` and the connection
    closes. ``kind`` is the malformed-request metric's label, or None for a refusal that is not malformed."""

    def __init__(self, kind: str | None, error: KvError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error


class EdgeServer:
    """The listening socket and what all its connections share: bounds, counters, logs, the handler."""

    def __init__(
        self,
        handler: Callable[[Request], Awaitable[Response]],
        admit: Callable[[str, str, CIMultiDict[str]], int],
        config: ClusterConfig,
        metrics: NodeMetrics,
        node_id: str,
    ) -> None:
        limits, timeouts = config.limits, config.timeouts
        self.handler = handler
        self.admit = admit
        self.limits = limits
        self.metrics = metrics
        self.header_timeout_ms = timeouts.header_timeout_ms
        self.header_timeout_s = timeouts.header_timeout_ms / 1000
        self.body_timeout_ms = timeouts.body_timeout_ms
        self.body_timeout_s = timeouts.body_timeout_ms / 1000
        self.idle_timeout_s = timeouts.keepalive_idle_timeout_ms / 1000
        # Every head byte a request may have within the limits, with their CRLFs, plus one read's worth: bytes
        # are counted a read at a time, from the read in which a request begins.
        head_bytes = limits.max_request_line_bytes + 2 + limits.max_headers * (limits.max_header_bytes + 2) + 2
        self.max_head_bytes = head_bytes + READ_BYTES
        self.bounds = ConnectionBounds.of(config)
        self.clients_open = 0
        self.reserved_open = 0
        self.connections: set[EdgeConnection] = set()
        # Reserved connections that have sent nothing yet, oldest first: silent sockets must not keep a peer or
        # a health check out of the reserve for a whole header timeout.
        self.silent_reserved: dict[EdgeConnection, None] = {}
        self.date = DateHeader()
        self.parse_errors = _parse_errors(limits)
        self.body_timeout_error = KvError(
            ErrorCode.REQUEST_TIMEOUT, f"the request body did not all arrive within {timeouts.body_timeout_ms} ms"
        )
        self.head_timeout_error = KvError(
            ErrorCode.REQUEST_TIMEOUT, "the request line and headers did not arrive in time"
        )
        self.loop = asyncio.get_running_loop()
        self.malformed_log = LogBudget(
            self.loop, "malformed-request lines", logging.WARNING, LOG_LINES_PER_WINDOW, LOG_WINDOW_S
        )
        self.refusal_log = LogBudget(self.loop, "refusal lines", logging.WARNING, LOG_LINES_PER_WINDOW, LOG_WINDOW_S)
        self.timeout_log = LogBudget(self.loop, "timeout lines", logging.INFO, LOG_LINES_PER_WINDOW, LOG_WINDOW_S)
        self._server: asyncio.Server | None = None
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

    async def start(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(lambda: EdgeConnection(self), host, port, reuse_address=True)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, give busy ones ``timeout_s`` to answer, then close all."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.finish()
        deadline_s = self.loop.time() + timeout_s
        while self.connections and self.loop.time() < deadline_s:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
        for budget in (self.malformed_log, self.refusal_log, self.timeout_log):
            budget.flush()

    def evict_silent_reserved(self) -> bool:
        """Free the slot of the oldest reserved connection that has sent nothing; False if there is none."""
        if not self.silent_reserved:
            return False
        oldest = next(iter(self.silent_reserved))
        del self.silent_reserved[oldest]
        self.metrics.refused("silent_reserved")
        oldest.evict()
        return True

    def open_connections(self) -> dict[str, int]:
        return {CLIENT: self.clients_open, RESERVED: self.reserved_open}

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

    def refuse_request(self, peername: object, fd: int) -> Response:
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
        return error_response(_CLIENT_LIMIT_ERROR)


class EdgeConnection(asyncio.Protocol):
    """One connection: admission, parsing within bounds, deadlines, and answers in request order."""

    def __init__(self, edge: EdgeServer) -> None:
        self._edge = edge
        self._loop = edge.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peername: object = None
        self._fd = -1
        # CLIENT or RESERVED once admitted; None for a refused connection (and after connection_lost).
        self._admission: str | None = None
        # Requests parsed and waiting their turn; a KvError is an answer that ends the connection.
        self._queue: deque[Request | KvError] = deque()
        self._busy = False
        # Parsing stopped for good (an error, an upgrade, the last request, or the node stopping): the
        # connection ends once everything queued is answered.
        self._parser_done = False
        self._lingering = False
        self._read_paused = False
        self._write_paused = False
        # A streamed answer waiting for resume_writing (``_stream``).
        self._writable: asyncio.Future[None] | None = None
        # The request being parsed.
        self._head_started = False
        self._method = ""
        self._target = ""
        self._request_headers: CIMultiDict[str] = CIMultiDict()
        self._url: list[bytes] = []
        # The request line's length so far (its target arrives in pieces).
        self._url_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        # Bytes received of the current request, and the most it may take on the wire (its head within the
        # limits; with its head in, the body's limit, room for chunk lines and trailers).
        self._wire_bytes = 0
        self._wire_limit = edge.max_head_bytes
        self._eof = False
        # The body's first piece, and all of it in one buffer once a second piece comes (a piece each, tiny
        # chunks would take ~40 bytes of memory per body byte).
        self._body = b""
        self._body_more: bytearray | None = None
        self._body_bytes = 0
        self._body_limit = 0
        self._body_what = "body"
        self._expect_continue = False
        # Bytes received but not yet parsed: reading stopped with MAX_QUEUED_REQUESTS waiting.
        self._unread: bytes | memoryview = b""
        # Closes a connection whose client has not read its answers for the idle timeout.
        self._stall_timer: asyncio.TimerHandle | None = None
        # The deadline of the current phase, and the one timer, moved only when it fires.
        self._phase = _IDLE
        self._deadline_s = _NO_DEADLINE
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s = _NO_DEADLINE

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        edge = self._edge
        bounds = edge.bounds
        tcp = cast(asyncio.Transport, transport)
        fd = self._fd = tcp.get_extra_info("socket").fileno()
        if edge.clients_open < bounds.clients and fd < bounds.client_fd_ceiling:
            edge.clients_open += 1
            self._admission = CLIENT
        elif fd < bounds.fd_ceiling and (edge.reserved_open < bounds.reserved or edge.evict_silent_reserved()):
            edge.reserved_open += 1
            self._admission = RESERVED
            # Until it sends a byte, another reserved connection may take its slot.
            edge.silent_reserved[self] = None
        else:
            edge.refuse_connection(tcp, fd)
            return
        self._transport = tcp
        self._peername = tcp.get_extra_info("peername")
        edge.connections.add(self)
        # The first request's head is timed from the connection's start.
        self._set_phase(_HEAD, edge.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._transport is None:
            # Refused at accept, or already lost.
            return
        self._release_slot()
        self._edge.connections.discard(self)
        self._edge.silent_reserved.pop(self, None)
        self._transport = None
        self._parser_done = True
        self._queue.clear()
        self._unread = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._wake_stream()

    def _wake_stream(self) -> None:
        """A streamed answer waiting for the client to read on goes on (or, the connection gone, ends)."""
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _release_slot(self) -> None:
        admission, self._admission = self._admission, None
        if admission == CLIENT:
            self._edge.clients_open -= 1
        elif admission == RESERVED:
            self._edge.reserved_open -= 1

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()
        # A client that reads nothing would otherwise hold its connection (and our answers to it) forever: no
        # other deadline runs while answers wait to be sent.
        if self._stall_timer is None:
            self._stall_timer = self._loop.call_later(self._edge.idle_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_stream()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._update_reading()
        # Answering stopped while the client was not reading.
        self._serve()

    def _write_stalled(self) -> None:
        self._stall_timer = None
        edge = self._edge
        edge.timeout_log.log(
            "connection from %s read none of its answers for %d ms: closed",
            _peer_text(self._peername),
            round(edge.idle_timeout_s * 1000),
        )
        self.abort()

    def finish(self) -> None:
        """Close once what is open is answered (now, if nothing is)."""
        self._parser_done = True
        if self._lingering or (not self._busy and not self._queue):
            self.abort()

    def evict(self) -> None:
        """Give up the slot at once (another connection takes it) and drop the connection."""
        self._release_slot()
        self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            # Not close(), which waits for the unsent answers of a client that may never read them.
            self._transport.abort()

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self._parser_done:
            # Lingering after an early answer, or ending: the rest is dropped.
            return
        if self._admission == RESERVED:
            self._edge.silent_reserved.pop(self, None)
        if self._unread:
            data = bytes(self._unread) + data
            self._unread = b""
        if len(data) <= FEED_BYTES:
            self._feed(data)
        else:
            # A slice at a time: one read may hold thousands of tiny requests, and parsing stops being
            # possible mid-read, so the queue would take them all. What is left waits unparsed.
            view = memoryview(data)
            for start in range(0, len(data), FEED_BYTES):
                if self._parser_done:
                    break
                if len(self._queue) >= MAX_QUEUED_REQUESTS:
                    self._unread = view[start:]
                    break
                self._feed(view[start : start + FEED_BYTES])
        self._serve()

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The requests before the upgrade are answered; this server speaks nothing else after them.
            self._stop_parsing(None)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                # A bug in a callback: the connection cannot be parsed on, and the node goes on.
                log.error("parsing a request from %s failed", _peer_text(self._peername), exc_info=refused)
                refused = _Refused("malformed", self._edge.parse_errors["malformed"])
            self._stop_parsing(refused)
        except httptools.HttpParserError as exc:
            if self._parser_done:
                # llhttp's error for bytes after a request that ends the connection (Connection: close,
                # HTTP/1.0): dropped unanswered, like anything sent after it.
                return
            kind = self._error_kind(exc)
            self._stop_parsing(_Refused(kind, self._edge.parse_errors[kind]))
        else:
            if self._head_started:
                # Count what the parser may be holding of this request (a header or a chunked body's
                # trailer is buffered whole before it is handed over), whatever the bytes are.
                self._wire_bytes += len(data)
                if self._wire_bytes > self._wire_limit:
                    self._stop_parsing(self._framing_too_large())

    def _framing_too_large(self) -> _Refused:
        if not self._headers_done:
            return _Refused("header_too_large", self._edge.parse_errors["header_too_large"])
        message = f"the request's framing (chunk lines, trailers) is over {self._wire_limit} bytes"
        return _Refused(None, KvError(ErrorCode.TOO_LARGE, message))

    def eof_received(self) -> bool:
        # The client will send nothing more: answer what is in (our side stays open for that), then close.
        self._eof = True
        self._parser_done = True
        return self._busy or bool(self._queue)

    def _error_kind(self, exc: httptools.HttpParserError) -> str:
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            return "bad_method"
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            return "bad_url"
        if self._headers_done:
            return _BODY_FRAMING
        reason = str(exc).lower()
        # llhttp rejects a Content-Length or Transfer-Encoding value before the header reaches on_header.
        if self._headers or "header" in reason or "content-length" in reason or "transfer-encoding" in reason:
            return "bad_header"
        return "bad_request_line" if self._head_started else "malformed"

    def _stop_parsing(self, refused: _Refused | None) -> None:
        self._parser_done = True
        if refused is not None:
            if refused.kind is not None:
                self._edge.report_malformed(
                    refused.kind, self._peername, f"answered {refused.error.code.http_status} and closed"
                )
            self._queue.append(refused.error)

    # httptools callbacks, in the order of a request.

    def on_message_begin(self) -> None:
        self._head_started = True
        self._url = []
        self._url_bytes = 0
        self._headers = []
        self._headers_done = False
        self._wire_bytes = 0
        self._wire_limit = self._edge.max_head_bytes
        self._body = b""
        self._body_more = None
        self._body_bytes = 0
        self._expect_continue = False
        if self._phase != _HEAD:
            # A connection's first request is timed from the connection's start, the others from their first byte.
            self._set_phase(_HEAD, self._edge.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        if not self._url_bytes:
            # The method, a space, and the space and version that follow the target ("GET " ... " HTTP/1.1").
            self._url_bytes = len(self._parser.get_method()) + 10
        self._url_bytes += len(url)
        if self._url_bytes > self._edge.limits.max_request_line_bytes:
            raise _Refused("request_line_too_long", self._edge.parse_errors["request_line_too_long"])

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._edge.limits
        if len(name) + len(value) + 2 > limits.max_header_bytes:
            raise _Refused("header_too_large", self._edge.parse_errors["header_too_large"])
        if self._headers_done:
            # A chunked body's trailer: bounded like a header, then ignored.
            return
        if len(self._headers) >= limits.max_headers:
            raise _Refused("too_many_headers", self._edge.parse_errors["too_many_headers"])
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        edge = self._edge
        version = self._parser.get_http_version()
        if version not in _SERVED_VERSIONS:
            raise _Refused("bad_version", edge.parse_errors["bad_version"])
        self._method = method = self._parser.get_method().decode("ascii")
        self._target = target = b"".join(self._url).decode("utf-8", "surrogateescape")
        self._request_headers = headers = CIMultiDict(
            [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in self._headers]
        )
        try:
            self._body_limit = limit = edge.admit(method, target, headers)
        except KvError as exc:
            raise _Refused(None, exc) from None
        declared = None
        what = "body"
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                declared = int(value)
            elif lowered == b"expect" and value.lower() == b"100-continue":
                # RFC 9110 10.1.1: an HTTP/1.0 client's expectation is ignored.
                self._expect_continue = self._parser.get_http_version() != "1.0"
            elif lowered == b"content-encoding":
                coding = value.strip().lower()
                what = f"{coding.decode()} body" if coding in _NAMED_CODINGS else "compressed body"
        self._body_what = what
        if declared is not None and declared > limit:
            raise _Refused(None, KvError(ErrorCode.TOO_LARGE, f"{what} is {declared} bytes; the limit is {limit}"))
        self._wire_limit = edge.max_head_bytes + CHUNKED_OVERHEAD_FACTOR * limit + TRAILER_BYTES
        # With "100 Continue" still to send, the client waits for it: the body's clock starts when it is sent.
        self._set_phase(_BODY, _NO_DEADLINE if self._expect_continue else edge.body_timeout_s)
        # "100 Continue" is sent by _serve once this read is parsed, if the body has not all come with it (a
        # request without a body is complete by then) and the request is next in line.

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._body_limit:
            message = f"{self._body_what} is over the limit of {self._body_limit} bytes"
            raise _Refused(None, KvError(ErrorCode.TOO_LARGE, message))
        if self._body_more is not None:
            self._body_more += body
        elif self._body:
            self._body_more = bytearray(self._body)
            self._body_more += body
        else:
            self._body = body

    def on_message_complete(self) -> None:
        more = self._body_more
        request = Request(
            self._method,
            self._target,
            self._request_headers,
            self._body if more is None else bytes(more),
            self._peername,
        )
        if self._parser.get_http_version() == "1.0" and self._parser.should_keep_alive():
            # HTTP/1.0 closes after each answer unless the answer says otherwise.
            request.keep_alive_10 = True
        self._head_started = False
        self._url = []
        self._headers = []
        self._headers_done = False
        self._body = b""
        self._body_more = None
        self._expect_continue = False
        self._queue.append(request)
        if not self._parser.should_keep_alive():
            # HTTP/1.0 without keep-alive, or Connection: close: this is the last request.
            self._parser_done = True
        self._set_phase(_BUSY, _NO_DEADLINE)
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            self._update_reading()

    # ------------------------------------------------------------ answering

    def _serve(self) -> None:
        """Answer the queued requests in order, as far as handlers answer at once."""
        if self._busy or self._transport is None or self._write_paused:
            # While the client reads nothing, answers would pile up in the transport's buffer.
            return
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, KvError):
                self._edge.metrics.error(item.code.value)
                self._write(error_response(item), "GET", close=True)
                return
            self._busy = True
            self._loop.create_task(self._answer(item))
            return
        self._after_answers()

    async def _answer(self, request: Request) -> None:
        edge = self._edge
        close = False
        try:
            if self._admission == RESERVED:
                path = target_path(request.raw_path)
                if path not in RESERVED_PATHS:
                    response = edge.refuse_request(self._peername, self._fd)
                    close = True
                else:
                    response = await edge.handler(request)
                    # Free the slot for the next peer or health check.
                    close = path != PEER_PATH
            else:
                response = await edge.handler(request)
        except Exception:
            # The router answers every error itself; anything past it is a bug, and the connection cannot go on.
            log.exception("unexpected error answering a request from %s", _peer_text(self._peername))
            self._busy = False
            self.abort()
            return
        self._busy = False
        if self._transport is None:
            return
        if isinstance(response, StreamResponse):
            await self._stream(response, request.method)
            return
        # The last answer of a connection that will parse nothing more closes it.
        close = close or response.close or (self._parser_done and not self._queue)
        self._write(response, request.method, close, keep_alive=request.keep_alive_10 and not close)
        if not close:
            self._serve()
            self._update_reading()

    async def _stream(self, response: StreamResponse, method: str) -> None:
        """Write ``response`` chunk by chunk, waiting while the client reads nothing (``pause_writing``; the stall
        timer ends a client that stops for good), then close. A client gone stops the producer."""
        chunks = response.chunks
        self._busy = True
        try:
            transport = self._transport
            if transport is None:
                return
            transport.write(serialize_stream_head(response, self._edge.date.line()))
            if method == "HEAD":
                return
            async for data in chunks:
                while self._write_paused and self._transport is not None:
                    self._writable = self._loop.create_future()
                    await self._writable
                transport = self._transport
                if transport is None:
                    return
                if data:
                    transport.write(chunk(data))
            if self._transport is not None:
                self._transport.write(chunk(b""))
        except Exception:
            log.exception("a streamed answer to %s failed", _peer_text(self._peername))
            self.abort()
            return
        finally:
            self._busy = False
            await chunks.aclose()  # type: ignore[attr-defined]
        self._end()

    def _write(self, response: Response, method: str, close: bool, *, keep_alive: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        connection = _CLOSE if close else _KEEP_ALIVE if keep_alive else b""
        data = serialize(response, self._edge.date.line(), connection, with_body=method != "HEAD")
        transport.write(data)
        if close:
            self._end()

    def _after_answers(self) -> None:
        """Everything queued is answered: wait for the next request, or finish the connection."""
        if self._parser_done:
            self._end()
            return
        if self._phase == _BUSY:
            self._set_phase(_IDLE, self._edge.idle_timeout_s)
        elif self._expect_continue and self._headers_done:
            self._send_continue()

    def _send_continue(self) -> None:
        self._expect_continue = False
        if self._transport is not None:
            self._transport.write(_CONTINUE)
            self._set_phase(_BODY, self._edge.body_timeout_s)

    def _end(self) -> None:
        """Shut our side after what is written; drop what the client still sends for ``LINGER_S``, then close."""
        self._parser_done = True
        self._queue.clear()
        transport = self._transport
        if transport is None or self._lingering:
            return
        self._lingering = True
        self._unread = b""
        # Answered and closing: the slot is free for the next client (a reserved one for the next peer or health
        # check), however long this client keeps its side open.
        self._release_slot()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if not self._eof and transport.can_write_eof():
            transport.write_eof()
            self._set_phase(_IDLE, LINGER_S)
        else:
            transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._lingering:
            return
        pause = self._write_paused or len(self._queue) >= MAX_QUEUED_REQUESTS
        if not pause and self._unread:
            # Bytes of an earlier read come before any new one.
            self.data_received(b"")
            if self._transport is None or self._lingering:
                return
            pause = self._write_paused or len(self._queue) >= MAX_QUEUED_REQUESTS or bool(self._unread)
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # ------------------------------------------------------------ deadlines

    def _set_phase(self, phase: int, timeout_s: float) -> None:
        self._phase = phase
        if timeout_s == _NO_DEADLINE:
            self._deadline_s = _NO_DEADLINE
            return
        deadline_s = self._deadline_s = self._loop.time() + timeout_s
        if deadline_s < self._timer_at_s:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at_s = deadline_s
            self._timer = self._loop.call_at(deadline_s, self._clock)

    def _clock(self) -> None:
        self._timer = None
        self._timer_at_s = _NO_DEADLINE
        deadline_s = self._deadline_s
        if deadline_s == _NO_DEADLINE or self._transport is None:
            return
        if self._loop.time() < deadline_s:
            self._timer_at_s = deadline_s
            self._timer = self._loop.call_at(deadline_s, self._clock)
            return
        self._expired()

    def _expired(self) -> None:
        edge = self._edge
        peer = _peer_text(self._peername)
        if self._lingering:
            self.abort()
        elif self._phase == _HEAD:
            edge.metrics.header_timeout()
            if self._head_started:
                edge.timeout_log.log(
                    "request head from %s not complete within %d ms: answered 408 and closed",
                    peer,
                    edge.header_timeout_ms,
                )
                self._timed_out(edge.head_timeout_error)
            else:
                edge.timeout_log.log(
                    "connection from %s sent no request within %d ms: closed", peer, edge.header_timeout_ms
                )
                self.abort()
        elif self._phase == _BODY:
            edge.timeout_log.log(
                "request body from %s not complete within %d ms: answered 408 and closed", peer, edge.body_timeout_ms
            )
            self._timed_out(edge.body_timeout_error)
        elif self._phase == _IDLE:
            self.abort()

    def _timed_out(self, error: KvError) -> None:
        self._stop_parsing(None)
        self._queue.append(error)
        self._deadline_s = _NO_DEADLINE
        self._serve()
