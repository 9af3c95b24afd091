"""The client's replication settings and session: what it sends, and the token it keeps from the answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import msgpack
import pytest
from aiohttp import web

from kvstore.client import AsyncClient, Client
from kvstore.messages import Deleted, Found, Written
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.session import SESSION_HEADER


class ScriptedNode:
    """Answers key ops with the next scripted session token and keeps what each request carried."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens: Iterator[str] = iter(tokens)
        self.requests: list[tuple[str, str, str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.query_string, request.headers.get(SESSION_HEADER)))
        headers = {SESSION_HEADER: next(self._tokens)}
        key = request.match_info["key"]
        if request.method == "GET":
            return web.Response(body=b"v", headers={**headers, "X-Kv-Version": "5"})
        doc = {"key": key, "deleted": True} if request.method == "DELETE" else {"key": key, "version": 5}
        return web.Response(body=msgpack.packb(doc), content_type="application/msgpack", headers=headers)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedNode, str]]:
    node = ScriptedNode(["0:5", "1:3,0:5", "0:4", "0:5,1:3"])
    app = web.Application()
    app.router.add_route("*", "/{route:kv|cas}/{key}", node.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield node, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_session_sends_its_token_and_keeps_the_highest_positions(scripted: tuple[ScriptedNode, str]) -> None:
    node, url = scripted
    async with AsyncClient(url, route_by_map=False, session=True) as client:
        assert await client.put("a", b"v", replication="semi-sync") == Written("a", 5)
        assert client.session_token == "0:5"
        assert await client.get("a", consistency="stale", max_staleness_ms=100) == Found("a", b"v", 5)
        assert client.session_token == "1:3,0:5"
        # An answer naming an older position (a concurrent op's) takes nothing back.
        assert await client.delete("a", replication="async") == Deleted("a", True)
        assert client.session_token == "0:5,1:3"
        assert await client.cas("a", None, b"w", replication="sync") == Written("a", 5)
    assert node.requests == [
        ("PUT", "replication=semi-sync", None),
        ("GET", "consistency=stale&max_staleness_ms=100", "0:5"),
        ("DELETE", "replication=async", "1:3,0:5"),
        ("POST", "", "0:5,1:3"),
    ]


async def test_a_client_without_a_session_sends_no_token(scripted: tuple[ScriptedNode, str]) -> None:
    node, url = scripted
    async with AsyncClient(url, route_by_map=False) as client:
        await client.put("a", b"v")
        await client.get("a", consistency="linearizable")
        assert client.session_token == ""
    assert node.requests == [("PUT", "", None), ("GET", "consistency=linearizable", None)]


async def test_a_session_may_start_from_a_token(scripted: tuple[ScriptedNode, str]) -> None:
    node, url = scripted
    async with AsyncClient(url, route_by_map=False, session=True, session_token="2:7") as client:
        await client.get("a")
        assert client.session_token == "0:5,2:7"
    assert node.requests == [("GET", "", "2:7")]
    with pytest.raises(ValueError, match="session_token"):
        AsyncClient(url, session=True, session_token="2-7")


def test_the_sync_client_takes_the_settings_too() -> None:
    async def scenario() -> None:
        async with InProcessCluster(loopback_config(1)) as running:
            await asyncio.to_thread(use_sync_client, running.url("n1"))

    asyncio.run(scenario())


def use_sync_client(url: str) -> None:
    with Client(url, session=True) as c:
        assert c.put("s", "v", replication="sync") == Written("s", 1)
        assert c.get("s", consistency="linearizable") == Found("s", b"v", 1, None)
        assert c.batch_put([("t", "w")], replication="sync") == [Written("t", 1)]
        assert c.delete("s", replication="sync") == Deleted("s", True)
        assert c.session_token == ""  # single mode answers no position
