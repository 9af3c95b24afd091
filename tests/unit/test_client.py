"""AsyncClient and Client against live in-process nodes: results, errors, and when it fails over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from kvstore.client import AsyncClient, Client, _Routes
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import Deleted, Failure, Found, ScanItem, ScanPage, Written
from kvstore.server.inprocess import InProcessCluster, free_ports, loopback_config
from partitioning.partition_map import PartitionMap


@pytest.fixture
async def cluster() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(2, partitions=8)) as running:
        yield running


@pytest.fixture
async def client(cluster: InProcessCluster) -> AsyncIterator[AsyncClient]:
    async with AsyncClient([cluster.url("n1")]) as c:
        yield c


def dead_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


async def test_put_get_delete(client: AsyncClient) -> None:
    assert await client.get("k") is None
    assert await client.put("k", b"\x00bytes") == Written("k", 1)
    assert await client.get("k") == Found("k", b"\x00bytes", 1, None)
    assert await client.put("k", "text") == Written("k", 2)
    assert await client.get("k") == Found("k", b"text", 2, None)
    assert await client.delete("k") == Deleted("k", True)
    assert await client.delete("k") == Deleted("k", False)
    assert await client.get("k") is None


async def test_a_ttl_comes_back_as_an_expiry(client: AsyncClient) -> None:
    await client.put("t", b"v", ttl_ms=60_000)
    found = await client.get("t")
    assert found is not None
    assert found.expires_at_ms is not None


async def test_awkward_keys_round_trip(client: AsyncClient) -> None:
    for key in ("a/b/../c", "..", ".", "100%", "q?x=1#f", "ключ ☃", " spaced "):
        await client.put(key, key)
        found = await client.get(key)
        assert found is not None
        assert (found.key, found.value) == (key, key.encode())


async def test_cas(client: AsyncClient) -> None:
    assert await client.cas("c", None, b"\xffone") == Written("c", 1)
    assert await client.cas("c", b"\xffone", "two") == Written("c", 2)
    with pytest.raises(KvError) as caught:
        await client.cas("c", "stale", "three")
    assert caught.value.code is ErrorCode.PRECONDITION_FAILED
    assert caught.value.definite
    assert await client.cas("c", "two", None) == Deleted("c", True)


async def test_scan_and_batches(client: AsyncClient) -> None:
    results = await client.batch_put([("p/a", b"\xff"), ("p/b", "B", 60_000), ("q", "Q")])
    assert [r.key for r in results if isinstance(r, Written)] == ["p/a", "p/b", "q"]
    page = await client.scan("p/")
    versions = [item.version for item in page.items]
    assert page == ScanPage((ScanItem("p/a", b"\xff", versions[0]), ScanItem("p/b", b"B", versions[1])), False)
    assert await client.scan(start="p/b", end="q", limit=5) == ScanPage((ScanItem("p/b", b"B", versions[1]),), False)
    assert await client.scan(start="a", end="q", limit=1) == ScanPage((ScanItem("p/a", b"\xff", versions[0]),), True)
    got = await client.batch_get(["p/a", "nope"])
    assert isinstance(got[0], Found)
    assert got[0].value == b"\xff"
    assert got[1] == Failure("not_found", "key 'nope' not found")


async def test_cluster_health_and_metrics(client: AsyncClient) -> None:
    assert (await client.cluster())["node_id"] == "n1"
    assert (await client.health())["status"] == "ok"
    assert "kvstore_http_requests_total" in await client.metrics()


async def test_server_errors_are_raised_with_their_code(client: AsyncClient) -> None:
    with pytest.raises(KvError) as caught:
        await client.put("", b"v")
    assert caught.value.code is ErrorCode.BAD_KEY
    with pytest.raises(KvError) as caught:
        await client.scan(limit=0)
    assert caught.value.code is ErrorCode.BAD_REQUEST


async def test_a_node_that_refuses_connections_is_skipped(cluster: InProcessCluster) -> None:
    async with AsyncClient([dead_url(), cluster.url("n2")]) as failover:
        assert await failover.put("f", b"v") == Written("f", 1)
        assert await failover.get("f") == Found("f", b"v", 1, None)


async def test_no_reachable_node_is_a_definite_unavailable() -> None:
    async with AsyncClient([dead_url(), dead_url()]) as nowhere:
        with pytest.raises(KvError) as caught:
            await nowhere.put("k", b"v")
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert caught.value.definite


@pytest.fixture
async def hangs_up() -> AsyncIterator[str]:
    """A server that reads a request and closes the connection without answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_write_that_may_have_happened_is_not_retried(cluster: InProcessCluster, hangs_up: str) -> None:
    async with AsyncClient([hangs_up, cluster.url("n1")], route_by_map=False) as c:
        with pytest.raises(KvError) as caught:
            await c.put("once", b"v")
        assert caught.value.code is ErrorCode.TIMEOUT
        assert not caught.value.definite
        # A read has no effect, so it moves on to the next node.
        assert await c.get("once") is None


class HangsUpOnSecond:
    """An HTTP/1.1 server that answers on a keep-alive connection, then reads the second request and
    closes that connection without answering; it answers every later request (a resend) again."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                lengths = [int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")]
                await reader.readexactly(lengths[0] if lengths else 0)
                self.requests.append(lines[0].split(" ")[0])
                if len(self.requests) == 2:
                    writer.close()
                    return
                body = b'{"status": "ok"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.mark.parametrize("method", ["put", "delete"])
async def test_a_write_on_a_reused_connection_is_sent_once(method: str) -> None:
    # aiohttp by itself resends a PUT or DELETE whose reused connection was closed: the resend may
    # apply the write twice, or fail to connect and make the write look definitely not applied.
    server = HangsUpOnSecond()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with AsyncClient([f"http://127.0.0.1:{port}"], route_by_map=False) as c:
            assert await c.health() == {"status": "ok"}
            with pytest.raises(KvError) as caught:
                await (c.put("k", b"v") if method == "put" else c.delete("k"))
    finally:
        listener.close()
        await listener.wait_closed()
    assert server.requests == ["GET", method.upper()]
    assert caught.value.code is ErrorCode.TIMEOUT
    assert not caught.value.definite


def test_the_sync_client_wraps_the_async_one() -> None:
    async def scenario() -> None:
        async with InProcessCluster(loopback_config(1)) as running:
            await asyncio.to_thread(use_sync_client, running.url("n1"))

    asyncio.run(scenario())


def use_sync_client(url: str) -> None:
    with Client(url) as c:
        assert c.put("s", "v") == Written("s", 1)
        assert c.get("s") == Found("s", b"v", 1, None)
        assert c.cas("s", "v", "w") == Written("s", 2)
        assert c.batch_get(["s"]) == [Found("s", b"w", 2, None)]
        assert c.scan("s").items == (ScanItem("s", b"w", 2),)
        with pytest.raises(KvError):
            c.cas("s", "v", "x")
        assert c.delete("s") == Deleted("s", True)
    c.close()  # closing twice is harmless


# ---------------------------------------------------------------- routing by the partition map


def requests_served(cluster: InProcessCluster, node_id: str, route: str) -> float:
    text = cluster.servers[node_id].metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kvstore_http_requests_total" and sample.labels["route"] == route:
                return sample.value
    return 0.0


async def test_a_key_goes_straight_to_its_owner_once_the_map_is_read(cluster: InProcessCluster) -> None:
    keys = [cluster.key_on("n2", f"r{i}") for i in range(3)]
    assert len(set(keys)) == 3
    async with AsyncClient([cluster.url("n1")]) as routed:
        for key in keys:
            written = await routed.put(key, b"v")
            assert await routed.get(key) == Found(key, b"v", written.version, None)
    # n1 was asked for the map only; n2 served every op itself.
    assert requests_served(cluster, "n1", "PUT /kv/{key}") == 0
    assert requests_served(cluster, "n2", "PUT /kv/{key}") == 3
    assert requests_served(cluster, "n1", "GET /cluster") == 1


async def test_without_routing_every_op_goes_to_the_given_node(cluster: InProcessCluster) -> None:
    key = cluster.key_on("n2", "pinned")
    async with AsyncClient([cluster.url("n1")], route_by_map=False) as pinned:
        assert await pinned.put(key, b"v") == Written(key, 1)
    assert requests_served(cluster, "n1", "PUT /kv/{key}") == 1
    assert requests_served(cluster, "n1", "GET /cluster") == 0


async def test_when_every_given_node_is_gone_the_members_of_the_last_map_serve(cluster: InProcessCluster) -> None:
    key = cluster.key_on("n2", "survivor")
    async with AsyncClient([cluster.url("n1")]) as c:
        await c.get(key)  # reads the map, which names n2 too
        await cluster.stop_node("n1")
        assert await c.put(key, b"v") == Written(key, 1)
        assert await c.get(key) == Found(key, b"v", 1)


async def test_an_owner_that_cannot_be_reached_falls_back_to_the_given_nodes(cluster: InProcessCluster) -> None:
    key = cluster.key_on("n2", "fallback")
    async with AsyncClient([cluster.url("n1")]) as c:
        await c.get(key)  # reads the map
        # A map whose owners are all gone: the op still succeeds through n1, which forwards.
        c._routes = _routes_to(dead_url(), 8)
        assert await c.put(key, b"v") == Written(key, 1)
        assert c._routes is None, "the map is read again after an owner could not be reached"
    assert requests_served(cluster, "n1", "PUT /kv/{key}") == 1


def _routes_to(url: str, partitions: int) -> _Routes:
    return _Routes(PartitionMap.round_robin(("n1",), partitions), (url,) * partitions)


@pytest.fixture
async def moved_map(cluster: InProcessCluster) -> AsyncIterator[tuple[str, list[str]]]:
    """A node that says every partition is its own, then answers every write ``wrong_epoch``, and on its
    second ``/cluster`` names the real cluster: what a client sees when the map moves under it."""
    seen: list[str] = []
    port = free_ports(1)[0]
    fake_url = f"http://127.0.0.1:{port}"

    async def cluster_doc(request: web.Request) -> web.Response:
        seen.append("cluster")
        if seen.count("cluster") == 1:
            fake_map = PartitionMap.round_robin(("f",), 1).to_json()
            doc = {"members": [{"node_id": "f", "url": fake_url}], "partition_map": fake_map}
        else:
            async with AsyncClient([cluster.url("n1")], route_by_map=False) as real:
                doc = await real.cluster()
        return web.Response(body=msgpack.packb(doc, use_bin_type=True), content_type="application/msgpack")

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.method)
        body = b'{"error":{"code":"wrong_epoch","message":"moved","definite":true}}'
        return web.Response(status=503, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/cluster", cluster_doc)
    app.router.add_route("*", "/kv/{key}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake_url, seen
    finally:
        await runner.cleanup()


async def test_a_wrong_epoch_answer_makes_the_client_read_the_map_and_send_once_more(
    cluster: InProcessCluster, moved_map: tuple[str, list[str]]
) -> None:
    fake_url, seen = moved_map
    async with AsyncClient([fake_url]) as c:
        assert await c.put("k", b"v") == Written("k", 1)
    assert seen == ["cluster", "PUT", "cluster"]
    async with AsyncClient([cluster.url("n1")], route_by_map=False) as check:
        assert await check.get("k") == Found("k", b"v", 1, None)
