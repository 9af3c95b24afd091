"""Range mode on real node servers: ranges split as keys arrive, move to the other nodes, and every key stays
readable and scannable in order through every node; GET /cluster and /metrics show the ranges."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from kvstore.client import AsyncClient
from kvstore.config import RangesConfig, StorageConfig
from kvstore.messages import Found
from kvstore.server.inprocess import InProcessCluster, loopback_config
from tests.server.server_support import local_samples

KEYS = [f"user/{i:04}" for i in range(120)]
WAIT_S = 30.0


def range_changes(cluster: InProcessCluster) -> tuple[int, int]:
    """The splits and merges every node made, from their metrics."""
    splits = merges = 0
    for node_id in cluster.servers:
        samples = local_samples(cluster, node_id)
        splits += int(samples[("kvstore_range_changes_total", (("kind", "split"),))])
        merges += int(samples[("kvstore_range_changes_total", (("kind", "merge"),))])
    return splits, merges


async def settled(http: aiohttp.ClientSession, cluster: InProcessCluster, min_ranges: int) -> list[dict[str, object]]:
    """Every node's GET /cluster once they all show one map of at least ``min_ranges`` ranges, balanced."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        docs = []
        for node_id in cluster.servers:
            async with http.get(cluster.url(node_id) + "/cluster") as response:
                docs.append(await response.json())
        maps = {str(doc["partition_map"]) for doc in docs}
        splits, merges = range_changes(cluster)
        if (
            len(maps) == 1
            and all(doc["balanced"] for doc in docs)
            and len(docs[0]["ranges"]) >= min_ranges
            # Every split and merge made so far is in the map (one may still have been due at the last look).
            and splits - merges == len(docs[0]["ranges"]) - 1
        ):
            return docs
        assert loop.time() < deadline, f"the cluster did not settle: {[d['epoch'] for d in docs]}"
        await asyncio.sleep(0.05)


async def test_ranges_split_spread_and_serve_every_key_in_order() -> None:
    ranges = RangesConfig(split_keys=16, split_bytes=1 << 20, merge_keys=4, merge_bytes=1 << 19, check_interval_ms=50)
    config = loopback_config(
        3, partitions=24, partitioner="range", ranges=ranges, storage=StorageConfig(engine="memory")
    )
    async with InProcessCluster(config) as cluster, aiohttp.ClientSession() as http:
        async with AsyncClient([cluster.url("n2")]) as client:
            for start in range(0, len(KEYS), 40):
                batch = [(key, key.encode()) for key in KEYS[start : start + 40]]
                assert all(not hasattr(r, "code") for r in await client.batch_put(batch))
        docs = await settled(http, cluster, min_ranges=len(KEYS) // 16)
        doc = docs[0]
        assert doc["partitioner"] == "range"
        spans = doc["ranges"]
        assert spans[0]["start"] == "" and spans[-1]["end"] is None
        assert all(a["end"] == b["start"] for a, b in itertools.pairwise(spans))
        assert {span["owner"] for span in spans} == {"n1", "n2", "n3"}
        for node_id in cluster.servers:
            async with AsyncClient([cluster.url(node_id)], route_by_map=False) as client:
                for key in KEYS[::7]:
                    found = await client.get(key)
                    assert isinstance(found, Found) and found.value == key.encode()
                page = await client.scan(prefix="user/", limit=1000)
                assert [item.key for item in page.items] == KEYS
                page = await client.scan(start="user/0030", end="user/0050", limit=1000)
                assert [item.key for item in page.items] == KEYS[30:50]
                pages = [p async for p in client.scan_pages(prefix="user/", page_size=7)]
                assert [item.key for p in pages for item in p.items] == KEYS
                assert [len(p.items) for p in pages] == [7] * (len(KEYS) // 7) + [len(KEYS) % 7]
        splits, _ = range_changes(cluster)
        assert splits >= len(spans) - 1
