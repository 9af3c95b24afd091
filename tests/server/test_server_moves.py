"""The move route (``POST /admin/moves``): a partition moves between in-process nodes with its data,
clients follow it, and bad orders are refused."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from copy_support import bearer
from server_support import HANG_GUARD_S, local_samples

from kvstore.client import AsyncClient
from kvstore.messages import Found
from kvstore.server.inprocess import InProcessCluster
from kvstore.server.routes_admin import ADMIN_MOVES_PATH


async def owner_of(http: aiohttp.ClientSession, url: str, partition: int) -> str:
    async with http.get(f"{url}/cluster") as response:
        doc = await response.json()
    owner: str = doc["partition_map"]["replicas"][partition][0]
    return owner


async def test_a_partition_moves_with_its_data_and_clients_follow(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    keys = [cluster.key_on("n1", f"m{i}") for i in range(5)]
    partition = cluster.servers["n1"].node.partition_map.partition_for_key(keys[0])
    keys = [k for k in keys if cluster.servers["n1"].node.partition_map.partition_for_key(k) == partition]
    async with AsyncClient([cluster.url("n1")]) as client:
        written = {key: await client.put(key, key.encode()) for key in keys}
        # The node that does not serve the partition starts nothing, and says why.
        async with http.post(
            cluster.url("n2") + ADMIN_MOVES_PATH, json={"partition": partition, "target": "n2"}, headers=bearer(cluster)
        ) as response:
            answer = await response.json()
        assert (response.status, answer["started"]) == (200, False)
        assert "owner" in answer["reason"] or "n2" in answer["reason"]
        async with http.post(
            cluster.url("n1") + ADMIN_MOVES_PATH, json={"partition": partition, "target": "n2"}, headers=bearer(cluster)
        ) as response:
            assert (response.status, (await response.json())["started"]) == (200, True)
        for _ in range(int(HANG_GUARD_S / 0.02)):
            if await owner_of(http, cluster.url("n1"), partition) == "n2":
                break
            await asyncio.sleep(0.02)
        assert await owner_of(http, cluster.url("n1"), partition) == "n2"
        assert partition in cluster.servers["n2"].node.replicas
        assert partition not in cluster.servers["n1"].node.replicas
        for key in keys:
            assert await client.get(key) == Found(key, key.encode(), written[key].version, None)
        # Writes go on at the new owner, versions still growing.
        after = await client.put(keys[0], b"after")
        assert after.version > max(w.version for w in written.values())
    source = local_samples(cluster, "n1")
    assert source[("kvstore_moves_total", (("outcome", "started"),))] == 1
    assert source[("kvstore_moves_total", (("outcome", "completed"),))] == 1
    assert source[("kvstore_moves_in_progress", ())] == 0
    assert source[("kvstore_move_bytes_total", ())] >= sum(len(k) * 2 for k in keys)
    assert local_samples(cluster, "n2")[("kvstore_moves_total", (("outcome", "started"),))] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"partition": 0}, "missing field(s) target"),
        ({"partition": "0", "target": "n2"}, "partition must be an integer"),
        ({"partition": True, "target": "n2"}, "partition must be an integer"),
        ({"partition": 0, "target": 2}, "target must be a node id"),
        ({"partition": 10**6, "target": "n2"}, "no partition"),
        ({"partition": 0, "target": "n2", "extra": 1}, "unknown field(s) extra"),
    ],
)
async def test_a_bad_move_order_is_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession, body: dict[str, object], message: str
) -> None:
    async with http.post(cluster.url("n1") + ADMIN_MOVES_PATH, json=body, headers=bearer(cluster)) as response:
        assert response.status == 400
        assert message in (await response.json())["error"]["message"]


async def test_a_move_order_needs_the_cluster_secret(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    async with http.post(cluster.url("n1") + ADMIN_MOVES_PATH, json={"partition": 0, "target": "n2"}) as response:
        assert response.status == 401
    assert sorted(cluster.servers["n1"].node.partition_map.owned_by("n1")) == sorted(
        cluster.servers["n1"].node.replicas
    )
