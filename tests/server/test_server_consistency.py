"""Replication settings, read consistency and session tokens over HTTP: parsing, refusals, the header's round trip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from server_support import error_of

from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.session import MAX_SESSION_BYTES, SESSION_HEADER


async def refusal(response: aiohttp.ClientResponse) -> str:
    assert response.status == 400, await response.text()
    error = await error_of(response)
    assert error["code"] == "bad_request" and error["definite"] is True
    return str(error["message"])


# ---------------------------------------------------------------- single mode


@pytest.mark.parametrize(
    ("method", "target", "message"),
    [
        ("GET", "/kv/k?consistency=stale", "consistency=stale needs leader mode"),
        ("GET", "/kv/k?consistency=lease", "consistency=lease needs leader mode"),
        ("GET", "/kv/k?consistency=eventual", "consistency must be one of linearizable, read-index"),
        ("GET", "/kv/k?consistency=stale&max_staleness_ms=ten", "max_staleness_ms must be a whole number"),
        ("GET", "/kv/k?max_staleness_ms=10", "max_staleness_ms bounds stale reads only"),
        ("GET", "/kv/k?replication=sync", "unknown query parameter 'replication'"),
        ("PUT", "/kv/k?replication=async", "replication=async needs leader mode"),
        ("PUT", "/kv/k?replication=fast", "replication must be one of sync, semi-sync, async"),
        ("DELETE", "/kv/k?replication=semi-sync", "replication=semi-sync needs leader mode"),
        # A write's consistency is leaderless mode's (ABD): a single-mode node names the mode it needs.
        ("DELETE", "/kv/k?consistency=stale", "w, consistency and a causal context (X-Kv-Context) on a write need "
         "leaderless mode"),
    ],
)
async def test_bad_or_single_mode_settings_are_400_with_the_json_error(
    cluster: InProcessCluster, http: aiohttp.ClientSession, method: str, target: str, message: str
) -> None:
    async with http.request(method, cluster.url("n1") + target, data=b"v") as response:
        assert message in await refusal(response)


async def test_single_mode_takes_the_settings_it_serves_anyway(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n2")
    async with http.put(f"{url}/kv/k?replication=sync&ttl_ms=60000", data=b"v") as response:
        assert response.status == 200
        # Single mode answers no position: a request without a token gets none.
        assert SESSION_HEADER not in response.headers
    for consistency in ("linearizable", "read-index"):
        async with http.get(f"{url}/kv/k?consistency={consistency}") as response:
            assert response.status == 200 and await response.read() == b"v"
    cas = {"expected": "v", "new": "w", "replication": "sync"}
    async with http.post(f"{url}/cas/k", json=cas) as response:
        assert response.status == 200
    async with http.post(f"{url}/cas/k", json={**cas, "replication": 1}) as response:
        assert "replication must be a string" in await refusal(response)
    puts = [{"key": "b", "value": "1"}]
    async with http.post(f"{url}/batch", json={"put": puts, "replication": "sync"}) as response:
        assert response.status == 200
    async with http.post(f"{url}/batch", json={"put": puts, "replication": "async"}) as response:
        assert "put[0]: replication=async needs leader mode" in await refusal(response)
    async with http.post(f"{url}/batch", json={"get": ["b"], "replication": "sync"}) as response:
        assert "batch body must be" in await refusal(response)
    async with http.post(f"{url}/batch?replication=sync", json={"put": puts}) as response:
        assert "unknown query parameter" in await refusal(response)
    async with http.delete(f"{url}/kv/k?replication=sync") as response:
        assert response.status == 200


async def test_a_session_token_is_echoed_advanced_and_a_bad_one_is_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.url("n1")
    async with http.put(f"{url}/kv/k", data=b"v", headers={SESSION_HEADER: "3:5,0:9"}) as response:
        assert response.status == 200
        # No position in single mode: the token comes back as it was.
        assert response.headers[SESSION_HEADER] == "3:5,0:9"
    async with http.get(f"{url}/kv/k", headers={SESSION_HEADER: "3:5"}) as response:
        assert response.status == 200 and response.headers[SESSION_HEADER] == "3:5"
    for token, message in [
        ("3-5", "partition:index entries"),
        ("3:5,3:6", "names partition 3 twice"),
        ("1:99999999999999999999", "partition:index entries"),
        ("1:9999999999999999999", "out of range"),
        ("1:1," * (MAX_SESSION_BYTES // 4 + 1), "the most is"),
    ]:
        async with http.get(f"{url}/kv/k", headers={SESSION_HEADER: token}) as response:
            assert message in await refusal(response), token
    headers = [(SESSION_HEADER, "1:1"), (SESSION_HEADER, "2:2")]
    async with http.get(f"{url}/kv/k", headers=headers) as response:
        assert "is given twice" in await refusal(response)


# ---------------------------------------------------------------- leader mode


@pytest.fixture
async def leader_cluster() -> AsyncIterator[InProcessCluster]:
    config = loopback_config(3, mode="leader", partitions=2)
    async with InProcessCluster(config) as running:
        yield running


async def until_written(http: aiohttp.ClientSession, url: str) -> None:
    """Bounded: the preferred owners campaign at start, so a leader is there within a few election rounds."""
    for _ in range(100):
        async with http.put(url, data=b"v") as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no leader took {url}")


async def test_leader_mode_takes_every_setting_and_serves_them(
    leader_cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = leader_cluster.url("n3")
    assert leader_cluster.servers["n3"].node.partition_map.partition_for_key("k") != (
        leader_cluster.servers["n3"].node.partition_map.partition_for_key("gone")
    ), "the test wants both partitions"
    await until_written(http, f"{url}/kv/k")
    await until_written(http, f"{url}/kv/gone")
    for replication in ("sync", "semi-sync", "async"):
        async with http.put(f"{url}/kv/k?replication={replication}", data=replication.encode()) as response:
            assert response.status == 200, await response.text()
    async with http.delete(f"{url}/kv/gone?replication=async") as response:
        assert response.status == 200
    for node_id in ("n1", "n2", "n3"):
        for query in ("consistency=linearizable", "consistency=read-index", "consistency=stale&max_staleness_ms=500"):
            async with http.get(f"{leader_cluster.url(node_id)}/kv/k?{query}") as response:
                assert response.status == 200, await response.text()
                assert await response.read() == b"async"
    async with http.get(f"{url}/kv/k", headers={SESSION_HEADER: "0:1,1:1"}) as response:
        assert response.status == 200
        partition = leader_cluster.servers["n3"].node.partition_map.partition_for_key("k")
        # The key's partition moves first; its position is at least the token's.
        first, _, rest = response.headers[SESSION_HEADER].partition(",")
        used, _, position = first.partition(":")
        assert int(used) == partition and int(position) >= 1
        assert rest == f"{1 - partition}:1"
