"""The HTTP edge (kvstore/server/http_server.py), driven over raw sockets to 127.0.0.1.

Malformed heads get JSON errors that never quote the request, are counted and logged once without a
traceback (and a flood logs a bounded number of lines); slow heads and idle keep-alive connections are
closed; past the connection bound clients get a definite 503 while peers and health checks still get in.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from server_support import (
    HANG_GUARD_S,
    Samples,
    closed_by_server,
    exchange,
    local_samples,
    parse_samples,
    port_of,
    read_reply,
    wait_for_connections,
)

from kvstore.config import ClusterConfig, Limits, Timeouts, local_cluster
from kvstore.server import http_server
from kvstore.server.inprocess import InProcessCluster, loopback_config

NODE_START_GUARD_S = 30.0
EDGE_LOGGER = "kvstore.server.http_server"
SMALL_TIMEOUTS = Timeouts(header_timeout_ms=200, keepalive_idle_timeout_ms=300, body_timeout_ms=200)


def get(path: str, *, keep_alive: bool = True) -> bytes:
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: kv\r\n" + connection + b"\r\n"


async def metric_samples(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        return parse_samples(await response.text())


@pytest.fixture
async def node() -> AsyncIterator[InProcessCluster]:
    """One node with 200 ms head and body timeouts and a 300 ms idle timeout."""
    async with InProcessCluster(loopback_config(1, partitions=4, timeouts=SMALL_TIMEOUTS)) as running:
        yield running


# ---------------------------------------------------------------- malformed requests

LONG_TARGET = "/kv/" + "q" * 9000
MALFORMED = [
    pytest.param(
        get(LONG_TARGET), 414, "uri_too_long", "request_line_too_long", b"qqqqqqqq", id="request-line-too-long"
    ),
    pytest.param(
        b"GET /health HTTP/1.1\r\nHost: kv\r\n" + b"".join(b"X-Many-%d: v\r\n" % i for i in range(200)) + b"\r\n",
        431,
        "headers_too_large",
        "too_many_headers",
        b"X-Many",
        id="200-headers",
    ),
    pytest.param(
        b"GET /health HTTP/1.1\r\nHost: kv\r\nX-Big: " + b"z" * 65536 + b"\r\n\r\n",
        431,
        "headers_too_large",
        "header_too_large",
        b"zzzzzzzz",
        id="64KiB-header",
    ),
    pytest.param(b"G@RBAGE /health HTTP/1.1\r\n\r\n", 400, "bad_request", "bad_method", b"G@RBAGE", id="bad-method"),
    pytest.param(
        b"GET /health HTTP/7.Q\r\nHost: kv\r\n\r\n", 400, "bad_request", "bad_request_line", b"7.Q", id="bad-version"
    ),
    pytest.param(
        b"GET /health HTTP/1.1\r\nHost: kv\r\nBad\x01Name: v\r\n\r\n",
        400,
        "bad_request",
        "bad_header",
        b"Bad\x01Name",
        id="invalid-header-char",
    ),
    pytest.param(
        b"PUT /kv/k HTTP/1.1\r\nHost: kv\r\nTransfer-Encoding: chunked\r\n\r\nNOTHEX\r\n",
        400,
        "bad_request",
        "bad_body_framing",
        b"NOTHEX",
        id="bad-chunk-size",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status", "code", "kind", "echo"), MALFORMED)
async def test_a_malformed_request_gets_a_json_error_that_quotes_nothing_and_the_connection_closes(
    node: InProcessCluster,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
    code: str,
    kind: str,
    echo: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    reply, closed = await exchange(port_of(node), request_bytes)
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    error = reply.error()
    assert (error["code"], error["definite"]) == (code, True)
    assert echo not in reply.raw
    assert closed

    edge_lines = [r for r in caplog.records if r.name == EDGE_LOGGER and "malformed request" in r.getMessage()]
    assert len(edge_lines) == 1
    line = edge_lines[0]
    assert line.levelno == logging.WARNING
    assert line.exc_info is None
    assert f"({kind})" in line.getMessage()
    assert "127.0.0.1:" in line.getMessage()
    assert echo.decode("latin-1") not in line.getMessage()
    assert [r for r in caplog.records if r.exc_info is not None] == []
    assert [r for r in caplog.records if r.name.startswith("aiohttp")] == []

    got = await metric_samples(node.url("n1"))
    assert got[("kvstore_http_malformed_requests_total", (("kind", kind),))] == 1
    assert got[("kvstore_errors_total", (("code", code),))] == 1


async def test_a_broken_chunk_after_100_continue_fails_that_request_once(
    node: InProcessCluster, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        writer.write(b"PUT /kv/k HTTP/1.1\r\nHost: kv\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        # The node says "100 Continue" once the head is in and the request is next: the broken chunk comes after.
        continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD_S)
        assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"3\r\nabc\r\nNOTHEX\r\n")
        reply = await read_reply(reader)
        assert reply.status == 400
        assert reply.error()["code"] == "bad_request"
        assert b"NOTHEX" not in reply.raw
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert [r for r in caplog.records if r.exc_info is not None] == []
    got = await metric_samples(node.url("n1"))
    assert got[("kvstore_http_malformed_requests_total", (("kind", "bad_body_framing"),))] == 1
    # The request never reached a route, which only ever sees whole requests.
    assert ("kvstore_http_requests_total", (("route", "PUT /kv/{key}"), ("status", "400"))) not in got
    async with aiohttp.ClientSession() as http, http.get(f"{node.url('n1')}/kv/k") as response:
        assert response.status == 404


async def test_a_flood_of_malformed_requests_is_counted_in_full_and_logged_in_bounded_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window longer than the test, so the count of lines does not depend on how fast the machine is.
    monkeypatch.setattr(http_server, "LOG_WINDOW_S", 3600.0)
    caplog.set_level(logging.INFO, logger=EDGE_LOGGER)
    flood = 1000
    async with InProcessCluster(loopback_config(1, partitions=4)) as cluster:
        port = port_of(cluster)
        gate = asyncio.Semaphore(20)

        async def one() -> int:
            async with gate:
                reply, _ = await exchange(port, b"G@RBAGE / HTTP/1.1\r\n\r\n")
                return reply.status

        statuses = await asyncio.gather(*(one() for _ in range(flood)))
        assert statuses == [400] * flood
        got = await metric_samples(cluster.url("n1"))
        assert got[("kvstore_http_malformed_requests_total", (("kind", "bad_method"),))] == flood
        lines = [r.getMessage() for r in caplog.records if r.name == EDGE_LOGGER and "malformed" in r.getMessage()]
        assert len(lines) == http_server.LOG_LINES_PER_WINDOW
    # Stopping the node reports what the window held back.
    summaries = [r.getMessage() for r in caplog.records if r.name == EDGE_LOGGER and "suppressed" in r.getMessage()]
    assert summaries == [
        f"suppressed {flood - http_server.LOG_LINES_PER_WINDOW} more malformed-request lines in the last 3600 s"
    ]


# ---------------------------------------------------------------- slow and idle connections


async def test_a_request_head_trickling_in_past_the_header_timeout_gets_408_and_is_closed(
    node: InProcessCluster,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))

    async def trickle() -> None:
        # A byte every 50 ms would keep a per-read timeout of 200 ms happy forever.
        for byte in b"GET /health HTTP/1.1\r\nHost: kv\r\nX-Slow: " + b"s" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        reply = await read_reply(reader)
        assert reply.status == 408
        assert reply.error() == {
            "code": "request_timeout",
            "message": "the request line and headers did not arrive in time",
            "definite": True,
        }
        assert await closed_by_server(reader)
    finally:
        sender.cancel()
        writer.close()
    got = await metric_samples(node.url("n1"))
    assert got[("kvstore_http_header_timeouts_total", ())] == 1
    assert got[("kvstore_errors_total", (("code", "request_timeout"),))] == 1


async def test_half_a_request_line_then_silence_gets_408_and_a_silent_connection_is_just_closed(
    node: InProcessCluster,
) -> None:
    port = port_of(node)
    half_reader, half_writer = await asyncio.open_connection("127.0.0.1", port)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        half_writer.write(b"GET /hea")
        assert (await read_reply(half_reader)).status == 408
        assert await closed_by_server(half_reader)
        assert await closed_by_server(silent_reader)
    finally:
        half_writer.close()
        silent_writer.close()
    got = await metric_samples(node.url("n1"))
    assert got[("kvstore_http_header_timeouts_total", ())] == 2
    assert got[("kvstore_errors_total", (("code", "request_timeout"),))] == 1


async def test_an_idle_keep_alive_connection_is_closed_without_an_answer(node: InProcessCluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        for _ in range(2):
            writer.write(get("/health"))
            reply = await read_reply(reader)
            assert reply.status == 200
            assert reply.headers.get("connection", "keep-alive").lower() != "close"
        # Now idle past keepalive_idle_timeout_ms: closed, with no 408 a client could take for an answer.
        assert await closed_by_server(reader)
    finally:
        writer.close()
    got = await metric_samples(node.url("n1"))
    assert ("kvstore_errors_total", (("code", "request_timeout"),)) not in got


async def test_a_body_that_stops_arriving_gets_408_the_write_is_not_applied_and_the_connection_closes(
    node: InProcessCluster,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        # Three of the ten bytes promised, then silence past body_timeout_ms.
        writer.write(b"PUT /kv/slow HTTP/1.1\r\nHost: kv\r\nContent-Length: 10\r\n\r\nabc")
        reply = await read_reply(reader)
        assert reply.status == 408
        assert reply.error() == {
            "code": "request_timeout",
            "message": "the request body did not all arrive within 200 ms",
            "definite": True,
        }
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert node.servers["n1"].storage.key_count() == 0


async def test_a_client_that_leaves_in_the_middle_of_a_body_is_not_an_internal_error(
    node: InProcessCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    writer.write(b"PUT /kv/gone HTTP/1.1\r\nHost: kv\r\nContent-Length: 10\r\n\r\nabc")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # The node notices on its next loop turns; /health answering afterwards orders the checks after it.
    for _ in range(int(HANG_GUARD_S / 0.01)):
        if node.servers["n1"].metrics.exposition().count(b'code="bad_request"'):
            break
        await asyncio.sleep(0.01)
    reply, _ = await exchange(port_of(node), get("/health", keep_alive=False))
    assert reply.status == 200
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None] == []
    got = local_samples(node)
    assert ("kvstore_errors_total", (("code", "internal"),)) not in got
    assert node.servers["n1"].storage.key_count() == 0


async def test_an_unknown_path_is_named_in_the_404_only_in_short(node: InProcessCluster) -> None:
    reply, _ = await exchange(port_of(node), get("/" + "p" * 5000, keep_alive=False))
    assert reply.status == 404
    assert reply.error()["message"] == f"no route for {'/' + 'p' * 99!r}... (5001 characters)"


# ---------------------------------------------------------------- connection bounds


async def test_past_the_client_bound_clients_get_503_while_health_and_metrics_still_answer() -> None:
    config = loopback_config(1, partitions=4, limits=Limits(max_client_connections=3))
    async with InProcessCluster(config) as cluster:
        port, url = port_of(cluster), cluster.url("n1")
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            for reader, writer in held:
                writer.write(get("/kv/absent"))
                assert (await read_reply(reader)).status == 404

            reply, closed = await exchange(port, get("/kv/absent"))
            assert reply.status == 503
            assert reply.error() == {
                "code": "overloaded",
                "message": "the node is at its connection limit; retry later",
                "definite": True,
            }
            assert closed
            reply, closed = await exchange(port, get("/health"))
            assert (reply.status, closed) == (200, True)

            # A scrape gets in as well, on a reserved connection.
            got = await metric_samples(url)
            assert got[("kvstore_http_connections_refused_total", (("reason", "client_limit"),))] == 1
            assert got[("kvstore_errors_total", (("code", "overloaded"),))] == 1
            assert got[("kvstore_http_connections", (("kind", "client"),))] == 3
        finally:
            for _, writer in held:
                writer.close()

        # The slots come back once the clients leave.
        await wait_for_connections(cluster, "client", 0)
        await wait_for_connections(cluster, "reserved", 0)
        reply, _ = await exchange(port, get("/kv/absent", keep_alive=False))
        assert reply.status == 404


async def test_past_the_reserved_connections_a_connection_gets_503_at_once() -> None:
    # Connections held silent must outlive the test's steps, however slow the machine.
    config = loopback_config(
        1, partitions=4, limits=Limits(max_client_connections=1), timeouts=Timeouts(header_timeout_ms=600_000)
    )
    async with InProcessCluster(config) as cluster:
        port = port_of(cluster)
        reserved = http_server.RESERVED_CONNECTIONS  # one node: no peers
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1 + reserved)]
        try:
            # The first connection is a client, the next ones are reserved; every one is admitted.
            for _, writer in held:
                writer.write(get("/kv/absent"))
            assert [(await read_reply(reader)).status for reader, _ in held] == [404] + [503] * reserved
            # Those were answered and closed; hold fresh ones in their places.
            for _, writer in held[1:]:
                writer.close()
            held[1:] = []
            await wait_for_connections(cluster, "reserved", 0)
            held += [await asyncio.open_connection("127.0.0.1", port) for _ in range(reserved)]
            await wait_for_connections(cluster, "reserved", reserved)
            # Each has begun a request (a silent one would give up its slot to the next connection).
            for _, writer in held[1:]:
                writer.write(b"GET /health HTTP/1.1\r\n")
                await writer.drain()
            edge = cluster.servers["n1"]._edge
            for _ in range(int(HANG_GUARD_S / 0.01)):
                if not edge.silent_reserved:
                    break
                await asyncio.sleep(0.01)
            assert not edge.silent_reserved
            # Nothing sent: the server answers at accept and closes.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                reply = await read_reply(reader)
                assert reply.status == 503
                assert reply.error()["code"] == "overloaded"
                assert await closed_by_server(reader)
            finally:
                writer.close()
        finally:
            for _, writer in held:
                writer.close()
        got = local_samples(cluster)
        assert got[("kvstore_http_connections_refused_total", (("reason", "connection_limit"),))] == 1
        assert got[("kvstore_http_connections_refused_total", (("reason", "client_limit"),))] == reserved
        await wait_for_connections(cluster, "client", 0)
        await wait_for_connections(cluster, "reserved", 0)


NODE_FD_LIMIT = 160


async def test_a_node_near_its_fd_limit_refuses_clients_but_serves_health_and_forwarded_peer_requests(
    tmp_path: Path,
) -> None:
    """n2 runs as a real node process (uvloop) with RLIMIT_NOFILE 160; n1 runs in the test."""
    config = loopback_config(2, partitions=4)
    config_path = tmp_path / "cluster.toml"
    config.save(config_path)
    log_path = tmp_path / "n2.log"
    with log_path.open("wb") as log_file:
        n2 = subprocess.Popen(
            [sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", "n2"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Hard and soft: a node lifts its soft limit to the hard one at startup.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NODE_FD_LIMIT, NODE_FD_LIMIT)),
        )
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        async with InProcessCluster(config, start=("n1",)) as cluster, aiohttp.ClientSession() as http:
            n2_url, n2_port = cluster.url("n2"), port_of(cluster, "n2")
            await wait_for_health(http, n2_url, n2)
            key = cluster.key_on("n2", "far")
            # Written on n2 directly, so n1 has not connected to n2 before the read below.
            async with http.put(f"{n2_url}/kv/{key}", data=b"far-value") as response:
                assert response.status == 200

            refused = None
            for _ in range(NODE_FD_LIMIT):
                reader, writer = await asyncio.open_connection("127.0.0.1", n2_port)
                held.append((reader, writer))
                writer.write(get("/kv/absent"))
                reply = await read_reply(reader)
                if reply.status != 404:
                    refused = reply
                    break
            assert refused is not None, "n2 never refused a client"
            assert refused.status == 503
            assert refused.error()["code"] == "overloaded"
            # Far below limits.max_client_connections (1024): the fd limit refused it.
            assert len(held) < NODE_FD_LIMIT

            async with http.get(f"{n2_url}/health") as response:
                assert response.status == 200
            # n1 forwards to the owner over a new peer connection, admitted as reserved.
            async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
                assert response.status == 200
                assert await response.read() == b"far-value"
            got = await metric_samples(n2_url)
            assert got[("kvstore_http_connections_refused_total", (("reason", "client_limit"),))] == 1
            # Two batches: n1's first forward names no incarnation of n2, is refused once and sent again.
            assert got[("kvstore_http_requests_total", (("route", "POST /peer"), ("status", "204")))] == 2
    finally:
        for _, writer in held:
            writer.close()
        n2.terminate()
        try:
            n2.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            n2.kill()
            n2.wait()
    log_text = log_path.read_text()
    assert "RLIMIT_NOFILE 160" in log_text
    assert "Traceback" not in log_text


async def wait_for_health(http: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(int(NODE_START_GUARD_S / 0.05)):
        assert process.poll() is None, "the node process exited"
        try:
            async with http.get(f"{url}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail("the node process did not answer /health")


# ---------------------------------------------------------------- settings


def test_edge_settings_round_trip_through_toml(tmp_path: Path) -> None:
    config = local_cluster(
        1,
        limits=Limits(max_client_connections=7, max_request_line_bytes=4000, max_header_bytes=3000, max_headers=9),
        timeouts=Timeouts(header_timeout_ms=1500, keepalive_idle_timeout_ms=20000),
    )
    config.save(tmp_path / "c.toml")
    assert ClusterConfig.load(tmp_path / "c.toml") == config
