"""Reading replicas' copies over HTTP: the client pages through a whole copy, and the real-cluster
convergence check (``chaos.run_real.replica_convergence``) reads every replica and judges them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
from aiohttp import web
from copy_support import TOMBSTONE, VALUE, WITH_SIBLINGS

from chaos.checkers.convergence import SKIPPED
from chaos.run_real import replica_convergence
from kvstore.client import AsyncClient, Client
from kvstore.errors import ErrorCode, KvError
from kvstore.server.inprocess import InProcessCluster, free_ports
from kvstore.storage.base import Record
from partitioning.partition_map import PartitionMap

TIMEOUT_S = 10.0


def two_copies_of_each_partition(cluster: InProcessCluster) -> PartitionMap:
    """Every node's map gives each partition two replicas, as a mode with two copies would; only the copy
    route and /cluster read it here, and no client op runs against it."""
    partition_map = PartitionMap.round_robin(cluster.config.node_ids, cluster.config.partitions, replication_factor=2)
    for server in cluster.servers.values():
        server.node.partition_map = partition_map
    return partition_map


def urls(cluster: InProcessCluster) -> dict[str, str]:
    return {node: cluster.url(node) for node in cluster.servers}


async def test_the_client_pages_through_a_whole_copy(cluster: InProcessCluster) -> None:
    partition = cluster.servers["n1"].node.partition_map.partitions_of("n1")[0]
    storage = cluster.servers["n1"].storage
    for i in range(23):
        storage.write(partition, f"k{i:02}", Record(f"v{i}".encode(), i + 1))
    for key, record in (("a", VALUE), ("b", TOMBSTONE), ("c", WITH_SIBLINGS)):
        storage.write(partition, key, record)
    async with AsyncClient([cluster.url("n1")], timeout_s=TIMEOUT_S) as client:
        copy = await client.replica_copy(partition, secret=cluster.config.secret, page_limit=5)
        assert (copy.node_id, copy.partition, copy.epoch, copy.replicas) == ("n1", partition, 1, ("n1",))
        assert list(copy.records) == storage.copy_of(partition)
        assert len(copy.records) == 26 and copy.clock_ms > 0
        # The default page size takes it in one go, with the same records.
        assert (await client.replica_copy(partition, secret=cluster.config.secret)).records == copy.records


async def test_the_client_raises_the_routes_refusals(cluster: InProcessCluster) -> None:
    elsewhere = cluster.servers["n2"].node.partition_map.partitions_of("n2")[0]
    async with AsyncClient([cluster.url("n1")], timeout_s=TIMEOUT_S) as client:
        with pytest.raises(KvError) as refused:
            await client.replica_copy(0, secret="wrong")
        assert refused.value.code is ErrorCode.UNAUTHORIZED
        with pytest.raises(KvError) as missing:
            await client.replica_copy(elsewhere, secret=cluster.config.secret)
        assert missing.value.code is ErrorCode.NOT_FOUND


async def test_the_sync_client_reads_a_copy_too(cluster: InProcessCluster) -> None:
    cluster.servers["n1"].storage.write(0, "a", VALUE)

    def read() -> list[tuple[str, Record]]:
        with Client(cluster.url("n1"), timeout_s=TIMEOUT_S) as client:
            return list(client.replica_copy(0, secret=cluster.config.secret).records)

    # In a worker thread: the nodes answer on this test's loop.
    assert await asyncio.to_thread(read) == [("a", VALUE)]


@pytest.fixture
async def changes_node_between_pages() -> AsyncIterator[str]:
    """A server whose first page of a copy comes from n1 and the next from n2, as when a client built on
    several URLs fails over in the middle of a copy."""

    async def page(request: web.BaseRequest) -> web.Response:
        first = "after" not in request.query
        doc = {"node_id": "n1" if first else "n2", "partition": 0, "epoch": 1, "replicas": ["n1", "n2"],
               "clock_ms": 1, "records": [], "next": "k" if first else None}
        return web.Response(body=msgpack.packb(doc), content_type="application/msgpack")

    port = free_ports(1)[0]
    runner = web.ServerRunner(web.Server(page))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_pages_from_different_nodes_are_no_copy(changes_node_between_pages: str) -> None:
    async with AsyncClient([changes_node_between_pages], timeout_s=TIMEOUT_S) as client:
        with pytest.raises(KvError) as mixed:
            await client.replica_copy(0, secret="any")
    assert mixed.value.code is ErrorCode.UNAVAILABLE
    assert mixed.value.message == "the copy of partition 0 began on n1 and went on on n2"


async def test_a_cluster_with_one_copy_per_partition_skips_the_check(cluster: InProcessCluster) -> None:
    verdict = await replica_convergence(urls(cluster), cluster.config.secret, TIMEOUT_S)
    assert verdict["valid"] == SKIPPED


async def test_a_real_cluster_with_two_copies_is_read_and_judged(cluster: InProcessCluster) -> None:
    partition_map = two_copies_of_each_partition(cluster)
    for partition, replicas in enumerate(partition_map.replicas):
        for node in replicas:
            storage = cluster.servers[node].storage
            storage.write(partition, f"p{partition}-value", VALUE)
            storage.write(partition, f"p{partition}-tombstone", TOMBSTONE)
            storage.write(partition, f"p{partition}-siblings", WITH_SIBLINGS)
    verdict = await replica_convergence(urls(cluster), cluster.config.secret, TIMEOUT_S)
    partitions = cluster.config.partitions
    assert (verdict["valid"], verdict["keys"], verdict["partitions"], verdict["copies"]) == (
        True, 3 * partitions, partitions, 2 * partitions,
    )

    # One replica of partition 5 holds an older tombstone, and one of partition 6 lost a key.
    older_on, lost_on = partition_map.replicas[5][1], partition_map.replicas[6][0]
    cluster.servers[older_on].storage.write(5, "p5-tombstone", Record(None, TOMBSTONE.version - 1))
    cluster.servers[lost_on].storage.remove(6, "p6-value")
    verdict = await replica_convergence(urls(cluster), cluster.config.secret, TIMEOUT_S)
    assert verdict["valid"] is False
    assert {d["key"] for d in verdict["diverged"]} == {"p5-tombstone", "p6-value"}
    lost = next(d for d in verdict["diverged"] if d["key"] == "p6-value")
    assert lost["values"][lost_on] == "<absent>"


async def test_a_replica_that_cannot_be_read_leaves_the_verdict_unknown(cluster: InProcessCluster) -> None:
    two_copies_of_each_partition(cluster)
    addresses = urls(cluster)
    await cluster.stop_node("n3")
    verdict = await replica_convergence(addresses, cluster.config.secret, TIMEOUT_S)
    assert verdict["valid"] == "unknown"
    assert verdict["reason"].startswith("could not read every replica's copy: unavailable")
