"""/metrics in leader mode: Raft elections, leadership changes, commit latency, follower lag and peer messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from server_support import Samples, local_samples

from kvstore.server.inprocess import InProcessCluster, loopback_config
from replication.raft import LEADER, RaftReplica

PARTITIONS = 3
NODES = ("n1", "n2", "n3")
# How long a test waits for elections before it fails (a guard against hanging, not a measurement).
SETTLE_GUARD_S = 30.0
WRITES = 5


@pytest.fixture
async def leader_cluster() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(3, partitions=PARTITIONS, mode="leader")) as running:
        yield running


async def wait_for_leaders(cluster: InProcessCluster) -> None:
    """Until every partition has a leader among the running nodes."""
    for _ in range(int(SETTLE_GUARD_S / 0.05)):
        if sum(server.node.leads() for server in cluster.servers.values()) == PARTITIONS:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the partitions never all had a leader")


def led_key(cluster: InProcessCluster, stem: str) -> tuple[str, str]:
    """A node that leads a partition now (which one depends on how the first elections went), and a key of it."""
    for node_id in NODES:
        node = cluster.servers[node_id].node
        for i in range(100 * PARTITIONS):
            key = f"{stem}-{i}"
            replica = node.replicas.get(node.partition_map.partition_for_key(key))
            if isinstance(replica, RaftReplica) and replica.role == LEADER:
                return node_id, key
    raise AssertionError("no node leads a partition")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_leadership_counters_match_the_partitions_led(leader_cluster: InProcessCluster) -> None:
    await wait_for_leaders(leader_cluster)
    led = 0.0
    for node_id in NODES:
        got = local_samples(leader_cluster, node_id)
        leaders = value(got, "kvstore_raft_leaders")
        became = value(got, "kvstore_raft_leader_changes_total", change="became")
        stopped = value(got, "kvstore_raft_leader_changes_total", change="stopped")
        # Every leadership a node took and did not lose is one partition it leads now.
        assert became - stopped == leaders
        # A node became leader only by winning a real election it started.
        assert value(got, "kvstore_raft_elections_started_total", kind="vote") >= became
        led += leaders
    assert led == PARTITIONS


async def test_commit_latency_counts_each_acknowledged_write_once_on_its_leader(
    leader_cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    await wait_for_leaders(leader_cluster)
    leader, key = led_key(leader_cluster, "c")
    before = {n: local_samples(leader_cluster, n) for n in NODES}
    for i in range(WRITES):
        async with http.put(f"{leader_cluster.url(leader)}/kv/{key}", data=f"v{i}".encode()) as response:
            assert response.status == 200
    after = {n: local_samples(leader_cluster, n) for n in NODES}
    count = "kvstore_raft_commit_latency_seconds_count"
    assert value(after[leader], count) - value(before[leader], count) == WRITES
    for follower in set(NODES) - {leader}:
        assert value(after[follower], count) == value(before[follower], count)
    bucket = ("kvstore_raft_commit_latency_seconds_bucket", (("le", "+Inf"),))
    assert after[leader][bucket] == value(after[leader], count)
    # Each write went to both followers in at least one append, carried in envelopes.
    appends = "kvstore_raft_messages_sent_total"
    sent = value(after[leader], appends, kind="AppendEntries") - value(before[leader], appends, kind="AppendEntries")
    assert sent >= 2 * WRITES
    envelopes = "kvstore_peer_messages_sent_total"
    assert value(after[leader], envelopes, kind="RaftBatch") > value(before[leader], envelopes, kind="RaftBatch")
    assert value(after[leader], "kvstore_peer_batches_sent_total") > 0


async def test_follower_lag_counts_the_entries_a_stopped_follower_missed(
    leader_cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    await wait_for_leaders(leader_cluster)
    leader, key = led_key(leader_cluster, "lag")
    stopped = max(set(NODES) - {leader})
    async with http.put(f"{leader_cluster.url(leader)}/kv/{key}", data=b"first") as response:
        assert response.status == 200
    # Wait until the follower to be stopped has acknowledged everything of every partition led there.
    for _ in range(int(SETTLE_GUARD_S / 0.05)):
        if value(local_samples(leader_cluster, leader), "kvstore_raft_follower_lag_entries", follower=stopped) == 0:
            break
        await asyncio.sleep(0.05)
    await leader_cluster.stop_node(stopped)
    for i in range(WRITES):
        async with http.put(f"{leader_cluster.url(leader)}/kv/{key}", data=f"v{i}".encode()) as response:
            assert response.status == 200
    got = local_samples(leader_cluster, leader)
    assert value(got, "kvstore_raft_follower_lag_entries", follower=stopped) == WRITES


async def test_single_mode_exposes_no_raft_metrics(cluster: InProcessCluster) -> None:
    names = {name for name, _ in local_samples(cluster)}
    assert not any(name.startswith("kvstore_raft_") for name in names)
    assert "kvstore_peer_batches_sent_total" in names
