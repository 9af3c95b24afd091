"""One keep-alive connection to a peer that carries pipelined ``POST /peer`` requests.

The peer transport (``peer.py``) used an aiohttp client session: a sender task per peer posted one batch and
waited for its answer before the next. Profiled under load, that client cost more CPU per batch than the
receiver's whole handling of it, and each batch waited for the previous one's round trip. A ``PeerLink``
writes a batch's request the moment the transport hands it one (no task to wake), lets up to
``MAX_PIPELINED`` requests wait for their answers on the connection, and reads the answers, in request order
as HTTP/1.1 sends them, with llhttp (``httptools``). The receiver is the node's ordinary HTTP edge, so the
wire format, the signature and every check on the receiving side are unchanged.

An answer is untrusted input too: the link reads at most ``MAX_ANSWER_BYTES`` of any one answer and drops the
connection past that, on a parse error or on an answer it did not ask for; nothing is kept of a body. A peer
that answers nothing for ``answer_timeout_s`` while requests wait loses the connection. Whatever ends the
connection, the requests still waiting are reported to the transport as possibly delivered
(``on_closed``): the peer may have taken them before it went.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import httptools

# Requests written on one connection and not yet answered. The receiving edge reads no further than 16
# parsed requests ahead of its answers.
MAX_PIPELINED = 8
# The most bytes of one answer (head and body): a /peer answer is a 204 or a short JSON error.
MAX_ANSWER_BYTES = 64 * 1024

T = TypeVar("T")


def request_head(host: str, path: str, headers: dict[str, str], body_bytes: int) -> bytes:
    """The head of a ``POST`` with a body of ``body_bytes``; names and values are this node's own text."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {body_bytes}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class PeerLink(asyncio.Protocol, Generic[T]):
    """The connection's protocol. ``post`` writes a request and remembers its ``tag``; each answer calls
    ``on_answer(tag, status)`` in request order; ``on_closed(tags)`` hands back the tags still unanswered once the
    connection is gone; ``on_ready()`` says the link can take another request again."""

    def __init__(
        self,
        on_answer: Callable[[T, int], None],
        on_closed: Callable[[list[T]], None],
        on_ready: Callable[[], None],
        answer_timeout_s: float,
    ) -> None:
        self._on_answer = on_answer
        self._on_closed = on_closed
        self._on_ready = on_ready
        self._answer_timeout_s = answer_timeout_s
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[T] = deque()
        self._parser = httptools.HttpResponseParser(self)
        # Bytes of the answer being parsed, as the parser hands them over (exact), and bytes read since the last
        # whole answer (catches what the parser holds unfinished, such as a header that never ends).
        self._answer_bytes = 0
        self._unfinished_bytes = 0
        self._paused = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ sending

    @property
    def ready(self) -> bool:
        """Whether a request may be written now."""
        return (
            self._transport is not None and not self._closed and not self._paused and len(self._waiting) < MAX_PIPELINED
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def post(self, head: bytes, body: bytes, tag: T) -> None:
        assert self._transport is not None and self.ready, "post only on a ready link"
        self._transport.writelines((head, body))
        self._waiting.append(tag)
        if self._timer is None:
            self._arm()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = list(self._waiting), deque()
        self._on_closed(waiting)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._on_ready()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._unfinished_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._drop()
            return
        if self._unfinished_bytes > MAX_ANSWER_BYTES:
            self._drop()

    def eof_received(self) -> bool:
        return False

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if not self._waiting:
            # An answer to nothing we asked: the peer is not speaking HTTP to us.
            raise httptools.HttpParserError("unsolicited answer")
        self._answer_bytes = 0

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))

    def on_body(self, body: bytes) -> None:
        self._count(len(body))

    def _count(self, size: int) -> None:
        self._answer_bytes += size
        if self._answer_bytes > MAX_ANSWER_BYTES:
            raise httptools.HttpParserError("answer too large")

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        keep_alive = self._parser.should_keep_alive()
        tag = self._waiting.popleft()
        self._unfinished_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._arm()
        if not keep_alive:
            # The peer closes after this answer: take no more requests here.
            self._closed = True
        self._on_answer(tag, status)
        if keep_alive:
            self._on_ready()
        elif self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ deadlines

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._answer_timeout_s, self._answer_overdue)

    def _answer_overdue(self) -> None:
        self._timer = None
        self._drop()

    def _drop(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
