"""Review of POST /admin/members with hostile input on in-process nodes: what it refuses, what it accepts, and what
an accepted order does to the cluster (addresses that are not a host and a port are refused)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from copy_support import bearer

from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.routes_admin import ADMIN_MEMBERS_PATH


@pytest.fixture
async def two() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(2, partitions=4)) as running:
        yield running


async def post(http: aiohttp.ClientSession, cluster: InProcessCluster, body: object) -> tuple[int, dict[str, object]]:
    async with http.post(cluster.url("n1") + ADMIN_MEMBERS_PATH, json=body, headers=bearer(cluster)) as response:
        return response.status, await response.json()


async def test_orders_that_are_not_orders_are_refused_and_change_nothing(
    two: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    """Sound: bad fields, huge or empty ids, ports 0 and past 65535, unknown states are 400s; the map stays."""
    before = two.servers["n1"].node.partition_map
    bodies: tuple[object, ...] = (
        [],
        {"node": "n9"},
        {"node": 9, "state": "active", "address": "127.0.0.1:7"},
        {"node": "", "state": "active", "address": "127.0.0.1:7"},
        {"node": "n" * 257, "state": "active", "address": "127.0.0.1:7"},
        {"node": "n9", "state": "active", "address": "host:0"},
        {"node": "n9", "state": "active", "address": "host:65536"},
        {"node": "n9", "state": "active", "address": "host"},
        {"node": "n9", "state": "active"},
        {"node": "n9", "state": "removed"},
        {"node": "n9", "state": "leaving"},
        {"node": "n9", "state": "active", "address": "127.0.0.1:7", "extra": 1},
    )
    for body in bodies:
        status, doc = await post(http, two, body)
        assert status == 400, (body, doc)
    assert two.servers["n1"].node.partition_map == before


async def test_a_join_at_an_address_that_is_no_host_and_port_is_refused(
    two: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    accepted = []
    for i, address in enumerate(("::1:80", "h/x:80", "x@y:80", "h?x:80", "a b:80")):
        status, _ = await post(http, two, {"node": f"bad{i}", "state": "active", "address": address})
        if status != 400:
            accepted.append((address, status))
    assert accepted == []


async def test_a_join_at_a_bracketed_ipv6_address_is_taken(two: InProcessCluster, http: aiohttp.ClientSession) -> None:
    """Sound: '[::1]:80' is a host and port, and the roster keeps it as given."""
    status, doc = await post(http, two, {"node": "v6", "state": "active", "address": "[::1]:80"})
    assert status == 200, doc
    assert doc["member"] == {"node": "v6", "address": "[::1]:80", "state": "active", "version": 2}


async def test_leaving_every_node_one_after_the_other_at_one_node_keeps_the_last(
    two: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    """Sound when the orders reach one node: the leave of the last active member is refused."""
    status, doc = await post(http, two, {"node": "n2", "state": "leaving"})
    assert status == 200, doc
    status, doc = await post(http, two, {"node": "n1", "state": "leaving"})
    assert status == 400 and "last active member" in str(doc), doc
    assert two.servers["n1"].node.partition_map.active == ("n1",)
