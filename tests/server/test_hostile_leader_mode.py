"""Review of leader mode's HTTP surface: what a client sends and what it must get back.

Each test here is a bug a hostile review found, fixed since: it asserts the right behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from server_support import error_of

from kvstore import session
from kvstore.config import ReplicationConfig
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.session import SESSION_HEADER


@pytest.fixture
async def leader_cluster() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(3, mode="leader", partitions=1)) as running:
        yield running


async def written_token(http: aiohttp.ClientSession, url: str) -> str:
    """The session token of a PUT, retried while the preferred owner's first election runs (bounded)."""
    for _ in range(100):
        async with http.put(url, data=b"v") as response:
            if response.status == 200:
                return response.headers[SESSION_HEADER]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no leader took {url}")


async def test_a_read_that_finds_nothing_still_advances_the_session(
    leader_cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    url = leader_cluster.url("n1")
    await written_token(http, f"{url}/kv/k")
    async with http.delete(f"{url}/kv/k") as response:
        assert response.status == 200
        deleted_at = session.parse(response.headers[SESSION_HEADER])[0]
    # A second client, with no token, reads the delete: its answer reflects position deleted_at or later.
    async with http.get(f"{url}/kv/k") as response:
        assert response.status == 404
        assert (await error_of(response))["code"] == "not_found"
        assert session.parse(response.headers.get(SESSION_HEADER, "")).get(0, 0) >= deleted_at


async def test_a_staleness_bound_is_taken_when_the_cluster_reads_stale_by_default(http: aiohttp.ClientSession) -> None:
    config = loopback_config(3, mode="leader", partitions=1, replication=ReplicationConfig(reads="stale"))
    async with InProcessCluster(config) as cluster:
        url = cluster.url("n2")
        await written_token(http, f"{url}/kv/k")
        async with http.get(f"{url}/kv/k?max_staleness_ms=60000") as response:
            assert response.status == 200, await response.text()
            assert await response.read() == b"v"
