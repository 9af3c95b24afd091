"""What several server test files share: raw HTTP over sockets, exact URLs, and a frozen node clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from kvstore.messages import Message
from kvstore.server.inprocess import InProcessCluster

# Bounds a wait on a socket so that a broken server fails the test instead of hanging it; never a measure.
HANG_GUARD_S = 10.0

# Ahead of the wall clock: a node judges expiry on the latest time it has seen, so a frozen clock
# behind the wall clock would not be the time it goes by.
FROZEN_MS = 4_000_000_000_000


class FrozenClock:
    """A fault policy that delivers every message at once and sets every node's clock to ``at_ms``,
    so that TTL deadlines are exact numbers."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return self.at_ms - now_ms


# Every client route a node serves, as (method, template): what its OpenAPI description must cover.
CLIENT_ROUTE_TEMPLATES = (
    ("GET", "/kv/{key}"),
    ("PUT", "/kv/{key}"),
    ("DELETE", "/kv/{key}"),
    ("POST", "/cas/{key}"),
    ("GET", "/scan"),
    ("POST", "/batch"),
    ("GET", "/cluster"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/changes"),
    ("GET", "/features/registry"),
    ("PUT", "/features/registry"),
    ("POST", "/features/push"),
    ("POST", "/features/online"),
    ("GET", "/features/watermarks/{view}"),
    ("PUT", "/features/watermarks/{view}"),
)
# The admin routes the description documents beside them (the cluster secret as a bearer token).
ADMIN_ROUTE_TEMPLATES = (("GET", "/admin/copies/{partition}"),)


def raw_url(base: str, path: str) -> URL:
    # encoded=True: the percent-escapes reach the node exactly as written here.
    return URL(base + path, encoded=True)


async def error_of(response: aiohttp.ClientResponse) -> dict[str, object]:
    """The JSON error of a response, checked to have exactly the documented shape."""
    assert response.headers["Content-Type"] == "application/json"
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "definite"}
    error: dict[str, object] = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes

    def error(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        error = doc["error"]
        assert isinstance(error, dict)
        return error


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD_S)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), HANG_GUARD_S)
    return Reply(int(status_line.split()[1]), headers, body, head + body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection without sending anything more."""
    try:
        rest = await asyncio.wait_for(reader.read(), HANG_GUARD_S)
    except ConnectionResetError:
        return True
    return rest == b""


async def one_reply(port: int, request: bytes) -> Reply:
    """Send ``request`` on a new connection and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_reply(reader)
    finally:
        writer.close()


async def exchange(port: int, request: bytes) -> tuple[Reply, bool]:
    """Send ``request`` on a new connection: the reply, and whether the server closed the connection after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        reply = await read_reply(reader)
        return reply, await closed_by_server(reader)
    finally:
        writer.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def local_samples(cluster: InProcessCluster, node_id: str = "n1") -> Samples:
    """A node's metrics read in-process, without taking a connection from it."""
    return parse_samples(cluster.servers[node_id].metrics.exposition().decode())


async def wait_for_connections(cluster: InProcessCluster, kind: str, count: int) -> None:
    """Until node n1 counts ``count`` open connections of ``kind`` (closes reach it a loop turn later)."""
    for _ in range(int(HANG_GUARD_S / 0.01)):
        if local_samples(cluster)[("kvstore_http_connections", (("kind", kind),))] == count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the node never counted {count} {kind} connections")


def port_of(cluster: InProcessCluster, node_id: str = "n1") -> int:
    return cluster.config.node(node_id).port
