"""GET/PUT/DELETE /kv/{key} on a live three-node cluster: bodies, headers, keys, TTLs, forwarding, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import msgpack
import pytest
from server_support import FROZEN_MS, FrozenClock, error_of, raw_url

from kvstore.config import Limits
from kvstore.server.inprocess import InProcessCluster, loopback_config


async def test_put_then_get_returns_the_raw_value_and_its_version(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n1")
    async with http.put(f"{url}/kv/greeting", data=b"hello") as response:
        assert response.status == 200
        assert await response.json() == {"key": "greeting", "version": 1}
    async with http.get(f"{url}/kv/greeting") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Kv-Version"] == "1"
        assert "X-Kv-Expires-At-Ms" not in response.headers
        assert await response.read() == b"hello"


async def test_every_key_is_reachable_from_every_node(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    keys = {owner: cluster.key_on(owner, "fwd") for owner in cluster.config.node_ids}
    for owner, key in keys.items():
        async with http.put(f"{cluster.url('n1')}/kv/{key}", data=f"owned by {owner}".encode()) as response:
            assert response.status == 200
    for reader in cluster.config.node_ids:
        for owner, key in keys.items():
            async with http.get(f"{cluster.url(reader)}/kv/{key}") as response:
                assert response.status == 200
                assert await response.read() == f"owned by {owner}".encode()
    # Each write landed on its owner's storage only.
    for owner in cluster.config.node_ids:
        assert cluster.servers[owner].storage.key_count() == 1


async def test_a_body_of_any_content_type_is_stored_as_raw_bytes(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n2")
    raw = b'{"not": "parsed"}'
    async with http.put(f"{url}/kv/doc", data=raw, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
    async with http.get(f"{url}/kv/doc") as response:
        assert await response.read() == raw
    binary = bytes(range(256))
    async with http.put(f"{url}/kv/bin", data=binary, headers={"Content-Type": "application/msgpack"}) as response:
        assert response.status == 200
    async with http.get(f"{url}/kv/bin") as response:
        assert await response.read() == binary


async def test_put_answers_in_msgpack_when_asked(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/msgpack"}
    async with http.put(f"{cluster.url('n1')}/kv/m", data=b"v", headers=headers) as response:
        assert response.headers["Content-Type"] == "application/msgpack"
        assert msgpack.unpackb(await response.read()) == {"key": "m", "version": 1}


async def test_keys_may_hold_slashes_percent_escapes_and_unicode(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n1")
    async with http.put(raw_url(url, "/kv/a/b/c"), data=b"slashes") as response:
        assert (await response.json())["key"] == "a/b/c"
    async with http.get(raw_url(url, "/kv/a%2Fb%2Fc")) as response:
        assert await response.read() == b"slashes"
    for key in ("ключ ☃", "..", "a?b#c", "100%"):
        async with http.put(raw_url(url, "/kv/" + quote(key, safe="")), data=key.encode()) as response:
            assert (await response.json())["key"] == key
        async with http.get(raw_url(url, "/kv/" + quote(key, safe=""))) as response:
            assert await response.read() == key.encode()


@pytest.mark.parametrize(
    ("path", "code"),
    [("/kv/%ff", "bad_key"), ("/kv/", "bad_key"), ("/kv/" + "k" * 1025, "bad_key")],
)
async def test_bad_keys_are_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession, path: str, code: str
) -> None:
    async with http.put(raw_url(cluster.url("n1"), path), data=b"v") as response:
        assert response.status == 400
        error = await error_of(response)
        assert error["code"] == code
        assert error["definite"] is True


async def test_missing_key_is_a_404_json_error(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{cluster.url('n3')}/kv/nothing-here") as response:
        assert response.status == 404
        assert await error_of(response) == {
            "code": "not_found",
            "message": "key 'nothing-here' not found",
            "definite": True,
        }


async def test_delete_reports_whether_the_key_existed(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = cluster.url("n2")
    async with http.put(f"{url}/kv/gone", data=b"v"):
        pass
    async with http.delete(f"{url}/kv/gone") as response:
        assert await response.json() == {"key": "gone", "deleted": True}
    async with http.delete(f"{url}/kv/gone") as response:
        assert await response.json() == {"key": "gone", "deleted": False}
    async with http.get(f"{url}/kv/gone") as response:
        assert response.status == 404


async def test_ttl_sets_an_expiry_and_the_key_vanishes_after_it(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    clock = FrozenClock(FROZEN_MS)
    for node_id in cluster.config.node_ids:
        cluster.faults(node_id).install(clock)
    url = cluster.url("n1")
    for query, ttl_ms in (("ttl_ms=60000", 60_000), ("ttl=1.5", 1500), ("ttl=0.0001", 1)):
        key = f"ttl-{ttl_ms}"
        async with http.put(f"{url}/kv/{key}?{query}", data=b"v") as response:
            assert response.status == 200
        async with http.get(f"{url}/kv/{key}") as response:
            assert response.headers["X-Kv-Expires-At-Ms"] == str(FROZEN_MS + ttl_ms)
    clock.at_ms = FROZEN_MS + 1500
    async with http.get(f"{url}/kv/ttl-1500") as response:
        assert response.status == 404
    async with http.get(f"{url}/kv/ttl-60000") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "query",
    [
        "ttl_ms=0",
        "ttl_ms=-5",
        "ttl_ms=1.5",
        "ttl=abc",
        "ttl=-1",
        "ttl=inf",
        "ttl=1&ttl_ms=1000",
        "color=red",
        "ttl_ms=1&ttl_ms=2",
    ],
)
async def test_bad_query_parameters_are_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession, query: str
) -> None:
    async with http.put(f"{cluster.url('n1')}/kv/k?{query}", data=b"v") as response:
        assert response.status == 400
        assert (await error_of(response))["code"] == "bad_request"
    async with http.get(f"{cluster.url('n1')}/kv/k") as response:
        assert response.status == 404, "a refused write must not be stored"


async def test_unknown_routes_and_wrong_methods_get_json_errors(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n1")
    async with http.get(f"{url}/no/such/route") as response:
        assert response.status == 404
        assert (await error_of(response))["code"] == "not_found"
    async with http.post(f"{url}/kv/k", data=b"v") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "DELETE, GET, PUT"
        assert (await error_of(response))["code"] == "method_not_allowed"
    async with http.delete(f"{url}/scan") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"


# ---------------------------------------------------------------- body size limits


@pytest.fixture
async def small_limits() -> AsyncIterator[InProcessCluster]:
    config = loopback_config(1, limits=Limits(max_value_bytes=1024))
    async with InProcessCluster(config) as running:
        yield running


async def test_a_value_over_the_limit_is_413(small_limits: InProcessCluster, http: aiohttp.ClientSession) -> None:
    url = small_limits.url("n1")
    async with http.put(f"{url}/kv/big", data=b"x" * 1025) as response:
        assert response.status == 413
        assert (await error_of(response))["code"] == "too_large"
    async with http.put(f"{url}/kv/fits", data=b"x" * 1024) as response:
        assert response.status == 200


async def test_a_declared_oversize_body_is_refused_without_being_sent(small_limits: InProcessCluster) -> None:
    node = small_limits.config.node("n1")
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        # Only the headers go out: the server must answer from Content-Length alone.
        writer.write(b"PUT /kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 413")
    finally:
        writer.close()


async def test_a_chunked_body_is_cut_off_at_the_limit(
    small_limits: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 100

    async with http.put(f"{small_limits.url('n1')}/kv/chunked", data=chunks()) as response:
        assert response.status == 413
    async with http.get(f"{small_limits.url('n1')}/kv/chunked") as response:
        assert response.status == 404
