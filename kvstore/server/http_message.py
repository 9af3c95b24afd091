"""The request a route handler is given and the response it returns, as the HTTP edge parses and writes them.

A ``Request`` arrives whole: the edge (``kvstore.server.http_server``) has read its body, within the route's
limit and the body timeout, before a handler sees it, so handlers never wait on the network. A
``Response`` is a status, a few headers and a body in bytes; ``serialize`` makes it one buffer for one write.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from http import HTTPStatus

from multidict import CIMultiDict


class Request:
    """One parsed request. ``raw_path`` is the request target as sent (percent-encoded, with its query)."""

    __slots__ = ("body", "headers", "keep_alive_10", "method", "peername", "raw_path")

    def __init__(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes, peername: object) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.body = body
        self.peername = peername
        # An HTTP/1.0 request that asked to keep the connection: its answer must say so.
        self.keep_alive_10 = False

    @property
    def query_string(self) -> str:
        """The raw (still percent-encoded) query, without the ``?`` (or a fragment); empty when there is none."""
        return self.raw_path.partition("?")[2].partition("#")[0]

    @property
    def content_length(self) -> int:
        return len(self.body)


class Response:
    """A whole response. ``force_close`` ends the connection once it is written."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = CIMultiDict(headers) if headers else CIMultiDict()
        self.close = False

    def force_close(self) -> None:
        self.close = True


class StreamResponse(Response):
    """A response whose body is produced as it is sent: ``chunks`` yields the parts, written with chunked transfer
    encoding, each once the client has read enough of the ones before (the transport's flow control: a client that
    stops reading stops the producer). The connection closes after the last chunk."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: AsyncIterator[bytes], status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(b"", status, headers)
        self.chunks = chunks
        self.close = True


def serialize_stream_head(response: StreamResponse, date_line: bytes) -> bytes:
    status = response.status
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")
    head = [status_line, date_line]
    for name, value in response.headers.items():
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    return b"".join(head)


def chunk(data: bytes) -> bytes:
    """One part of a chunked body (an empty ``data`` is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}


class DateHeader:
    """The ``Date`` header line (RFC 9110 6.6.1: an origin server with a clock sends one), formatted once per
    second rather than once per response."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode("ascii")
        return self._line


def serialize(response: Response, date_line: bytes, connection_line: bytes, *, with_body: bool = True) -> bytes:
    """Status line, headers (``Content-Length`` always, ``connection_line`` if not empty) and the body unless
    ``with_body`` is false (the answer to a HEAD request says how long the body is, without it)."""
    status = response.status
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")
    body = response.body
    head = [status_line, date_line]
    for name, value in response.headers.items():
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    # A 204 or 304 has no body and, for 204, must not say Content-Length.
    if status != 204 and status != 304:
        head.append(b"Content-Length: %d\r\n" % len(body))
    if connection_line:
        head.append(connection_line)
    head.append(b"\r\n")
    if with_body:
        head.append(body)
    return b"".join(head)
