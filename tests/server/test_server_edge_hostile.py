"""Regressions from a hostile pass over the HTTP edge (kvstore/server/http_server.py), over raw sockets.

Each test pins a promise of the edge that a probe broke: data pipelined after a ``Connection: close``
request is dropped (not answered 400), a client that never reads cannot make the node buffer answers
without bound nor hold its connection forever (not even past the node's stop), a chunked body in 1-byte
chunks takes about its own size in memory, ``100 Continue`` goes only to an HTTP/1.1 request that still has
a body to send, a connection answered and closing does not hold a reserved slot, and a malformed
``Content-Length`` is a malformed header.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest
from server_support import (
    HANG_GUARD_S,
    closed_by_server,
    exchange,
    local_samples,
    port_of,
    read_reply,
    wait_for_connections,
)

from kvstore.config import Limits, Timeouts
from kvstore.server import app, http_server
from kvstore.server.inprocess import InProcessCluster, loopback_config

SMALL_TIMEOUTS = Timeouts(header_timeout_ms=300, keepalive_idle_timeout_ms=300, body_timeout_ms=300)
METRICS_OK = ("kvstore_http_requests_total", (("route", "GET /metrics"), ("status", "200")))


@pytest.fixture
async def node() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(1, partitions=4, timeouts=SMALL_TIMEOUTS)) as running:
        yield running


async def assert_serves(cluster: InProcessCluster) -> None:
    """The node still writes and reads back."""
    port = port_of(cluster)
    reply, _ = await exchange(port, b"PUT /kv/canary HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    assert reply.status == 200
    reply, _ = await exchange(port, b"GET /kv/canary HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (reply.status, reply.body) == (200, b"abc")


@pytest.fixture
def non_reader() -> Iterator[list[socket.socket]]:
    """Sockets of clients that never read (a tiny receive buffer, so the node's answers back up at once)."""
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def connect_non_reader(port: int, held: list[socket.socket]) -> socket.socket:
    sock = socket.socket()
    held.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def send_what_fits(sock: socket.socket, data: bytes, rounds: int = 100) -> int:
    """Send as much of ``data`` as the node takes within ``rounds`` short waits; the bytes sent."""
    sent = 0
    for _ in range(rounds):
        try:
            sent += sock.send(data[sent:])
        except BlockingIOError:
            await asyncio.sleep(0.01)
        if sent == len(data):
            break
    return sent


# ---------------------------------------------------------------- pipelining after Connection: close


async def test_a_request_pipelined_after_connection_close_is_dropped_not_answered_400(node: InProcessCluster) -> None:
    # llhttp calls the bytes after a "Connection: close" request an error; the node answered the first request
    # without "Connection: close", then a 400 for the rest, and counted a malformed request.
    port = port_of(node)
    first = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first + b"GET /health HTTP/1.1\r\n\r\n" + b"GET /kv/x HTTP/1.1\r\n\r\n")
        reply = await read_reply(reader)
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert not [key for key in local_samples(node) if key[0] == "kvstore_http_malformed_requests_total"]
    await assert_serves(node)


# ---------------------------------------------------------------- clients that never read


async def test_a_pipelining_client_that_never_reads_gets_few_answers_buffered(
    node: InProcessCluster, non_reader: list[socket.socket]
) -> None:
    # The node went on answering queued requests while the client read nothing: one 1 MiB write of
    # "GET /metrics" made it buffer thousands of answers (tens of MB).
    sock = connect_non_reader(port_of(node), non_reader)
    request = b"GET /metrics HTTP/1.1\r\n\r\n"
    sent = await send_what_fits(sock, request * (1024 * 1024 // len(request)))
    assert sent >= 64 * 1024
    answered = 0.0
    # An observation window, not a measure: the count must stay bounded however long we look.
    for _ in range(150):
        answered = local_samples(node).get(METRICS_OK, 0.0)
        assert answered < 2000
        await asyncio.sleep(0.01)
    await assert_serves(node)


async def test_a_client_that_never_reads_is_closed_and_its_slot_freed(
    node: InProcessCluster, non_reader: list[socket.socket]
) -> None:
    # Writes paused (the client reads nothing) left the connection without any deadline, and closing it
    # waited for its unsent answers forever: the slot stayed taken as long as the client liked.
    sock = connect_non_reader(port_of(node), non_reader)
    request = b"GET /metrics HTTP/1.1\r\n\r\n"
    await send_what_fits(sock, request * (256 * 1024 // len(request)))
    await wait_for_connections(node, "client", 1)
    await wait_for_connections(node, "client", 0)
    await assert_serves(node)


async def test_stop_closes_a_connection_whose_client_never_reads(
    monkeypatch: pytest.MonkeyPatch, non_reader: list[socket.socket]
) -> None:
    monkeypatch.setattr(app, "SHUTDOWN_TIMEOUT_S", 0.5)
    timeouts = Timeouts(keepalive_idle_timeout_ms=600_000)
    async with InProcessCluster(loopback_config(1, partitions=4, timeouts=timeouts)) as cluster:
        sock = connect_non_reader(port_of(cluster), non_reader)
        request = b"GET /metrics HTTP/1.1\r\n\r\n"
        await send_what_fits(sock, request * (256 * 1024 // len(request)))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(cluster.stop_node("n1"), HANG_GUARD_S)
    # After stop() the node's side is gone: what it had sent drains, then EOF or a reset, never a socket
    # still being written to.
    sock.setblocking(True)
    sock.settimeout(HANG_GUARD_S)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail("the node's side of the connection outlived stop()")


# ---------------------------------------------------------------- bodies


async def test_a_body_in_one_byte_chunks_takes_about_its_own_size_in_memory() -> None:
    # Each chunk was kept as its own bytes object (~40 bytes each): a 512 KiB body held ~20 MiB.
    body_bytes = 512 * 1024
    async with InProcessCluster(loopback_config(1, partitions=4)) as node:
        await put_in_one_byte_chunks(node, body_bytes)


async def put_in_one_byte_chunks(node: InProcessCluster, body_bytes: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    tracemalloc.start()
    try:
        writer.write(b"PUT /kv/chunky HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"1\r\nx\r\n" * body_bytes + b"0\r\n\r\n")
        reply = await read_reply(reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()
    assert reply.status == 200
    # The wire bytes (6 per body byte, the test's own included), the body and its stored copy, with room.
    assert peak < 20 * body_bytes
    reply, _ = await exchange(port_of(node), b"GET /kv/chunky HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.body == b"x" * body_bytes


# ---------------------------------------------------------------- 100 Continue


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"PUT /kv/e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", id="http-1.0-with-body"
        ),
        pytest.param(b"GET /health HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", id="no-body"),
        pytest.param(
            b"PUT /kv/e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            id="body-already-sent",
        ),
    ],
)
async def test_100_continue_is_sent_only_for_a_body_still_to_come_over_http_1_1(
    node: InProcessCluster, request_bytes: bytes
) -> None:
    # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request must be ignored; a request with no
    # body (or all of it in already) has nothing to continue.
    reply, closed = await exchange(port_of(node), request_bytes)
    assert reply.status == 200
    assert closed


async def test_100_continue_follows_the_answer_to_an_earlier_pipelined_request(node: InProcessCluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        writer.write(
            b"GET /metrics HTTP/1.1\r\n\r\nPUT /kv/late HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert (await read_reply(reader)).status == 200
        continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD_S)
        assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        assert (await read_reply(reader)).status == 200
    finally:
        writer.close()


# ---------------------------------------------------------------- connection bounds


async def test_connections_answered_503_and_lingering_do_not_hold_the_reserved_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that reads its 503 and keeps its socket open held a reserved slot for all of LINGER_S, so a
    # flood of such clients kept health checks and peers out.
    monkeypatch.setattr(http_server, "LINGER_S", 600.0)
    config = loopback_config(1, partitions=4, limits=Limits(max_client_connections=1))
    async with InProcessCluster(config) as cluster:
        port = port_of(cluster)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1 + http_server.RESERVED_CONNECTIONS)]
        try:
            for _, writer in held:
                writer.write(b"GET /kv/absent HTTP/1.1\r\n\r\n")
            statuses = [(await read_reply(reader)).status for reader, _ in held]
            assert statuses == [404] + [503] * http_server.RESERVED_CONNECTIONS
            reply, _ = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
            assert reply.status == 200
        finally:
            for _, writer in held:
                writer.close()


# ---------------------------------------------------------------- malformed heads


@pytest.mark.parametrize("value", [b"3, 3", b"+3", b"99999999999999999999999"])
async def test_a_malformed_content_length_is_a_malformed_header(node: InProcessCluster, value: bytes) -> None:
    # llhttp fails it before the header reaches a callback: it was called a malformed request line.
    reply, closed = await exchange(port_of(node), b"PUT /kv/a HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\nabc")
    assert (reply.status, reply.error()["message"], closed) == (400, "a header is malformed", True)
    assert local_samples(node)[("kvstore_http_malformed_requests_total", (("kind", "bad_header"),))] == 1
    await assert_serves(node)


async def test_silent_connections_give_their_reserved_slots_to_a_health_check() -> None:
    # Sockets that connect and send nothing held reserved slots for a whole header timeout (10 min here),
    # keeping health checks and peers out.
    config = loopback_config(
        1, partitions=4, limits=Limits(max_client_connections=1), timeouts=Timeouts(header_timeout_ms=600_000)
    )
    async with InProcessCluster(config) as cluster:
        port = port_of(cluster)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1 + http_server.RESERVED_CONNECTIONS)]
        try:
            await wait_for_connections(cluster, "reserved", http_server.RESERVED_CONNECTIONS)
            reply, _ = await exchange(port, b"GET /health HTTP/1.1\r\n\r\n")
            assert reply.status == 200
            refused = ("kvstore_http_connections_refused_total", (("reason", "silent_reserved"),))
            assert local_samples(cluster)[refused] == 1
            # The client connection that was first keeps its slot: it is no reserved one.
            _, first_writer = held[0]
            first_writer.write(b"GET /kv/absent HTTP/1.1\r\n\r\n")
            assert (await read_reply(held[0][0])).status == 404
        finally:
            for _, writer in held:
                writer.close()


# ---------------------------------------------------------------- versions, targets


async def test_an_http_version_other_than_1_0_and_1_1_is_refused(node: InProcessCluster) -> None:
    reply, closed = await exchange(port_of(node), b"GET /health HTTP/2.0\r\n\r\n")
    assert (reply.status, reply.error()["message"], closed) == (400, "only HTTP/1.1 and HTTP/1.0 are served", True)
    assert local_samples(node)[("kvstore_http_malformed_requests_total", (("kind", "bad_version"),))] == 1
    await assert_serves(node)


async def test_an_http_1_0_keep_alive_answer_says_so_and_the_connection_stays(node: InProcessCluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = await read_reply(reader)
            assert (reply.status, reply.headers["connection"]) == (200, "keep-alive")
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        reply = await read_reply(reader)
        assert (reply.status, reply.headers["connection"]) == (200, "close")
        assert await closed_by_server(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        (b"/health#frag", 200, None),
        (b"/kv/a%zzb", 400, "bad_key"),
        (b"/kv/a%2", 400, "bad_key"),
    ],
)
async def test_a_fragment_names_nothing_and_a_broken_escape_is_a_bad_key(
    node: InProcessCluster, target: bytes, status: int, code: str | None
) -> None:
    reply, _ = await exchange(port_of(node), b"GET " + target + b" HTTP/1.1\r\n\r\n")
    assert reply.status == status
    if code is not None:
        assert reply.error()["code"] == code
