"""Multi-Raft at rest in the simulator: a cluster's peer messages per heartbeat interval do not grow with its
partition count (heartbeats coalesced per pair of nodes, kvstore/raft_batching.py).

Leader mode, 3 nodes, 3 replicas per partition, nothing written. A zero network latency makes every heartbeat's
reply leave in the same millisecond as the heartbeat, so a window of whole heartbeat intervals holds exactly its
ticks' messages: the counts are exact.
"""

from __future__ import annotations

import pytest

from kvstore.config import StorageConfig, local_cluster
from kvstore.messages import Found, GetOp, PutOp, Written
from kvstore.sim.cluster import SimCluster
from kvstore.sim.network import FixedLatency

SEED = 5
# Long enough for every group to elect its leader and for the elections' traffic to end.
SETTLE_MS = 3000
INTERVALS = 10


def messages_per_interval(partitions: int) -> tuple[int, SimCluster]:
    config = local_cluster(3, partitions=partitions, mode="leader", replicas=3, storage=StorageConfig(fsync="batch"))
    cluster = SimCluster(SEED, config, latency=FixedLatency(0))
    cluster.run_for(SETTLE_MS)
    before = cluster.network.sent
    cluster.run_for(INTERVALS * config.timeouts.heartbeat_interval_ms)
    return (cluster.network.sent - before) // INTERVALS, cluster


@pytest.mark.parametrize(
    ("partitions", "expected"),
    [
        # One group: its leader's heartbeat to each of 2 followers, and each reply.
        (1, 4),
        # Every node leads: per node one envelope of heartbeats to each peer and one envelope of replies back.
        (3, 12),
        (64, 12),
    ],
)
def test_messages_per_heartbeat_interval_at_rest_stay_flat_with_partitions(partitions: int, expected: int) -> None:
    count, cluster = messages_per_interval(partitions)
    assert count == expected
    # Every group has one leader (with 3 groups or more, every node leads some: 13, 26 and 25 of 64 here).
    leads = [cluster.node(n).leads() for n in cluster.node_ids()]
    assert sum(leads) == partitions and (partitions < 3 or min(leads) >= 1), leads
    # And the groups still serve.
    assert isinstance(cluster.request("n2", PutOp("k", b"v")), Written)
    found = cluster.request("n3", GetOp("k"))
    assert isinstance(found, Found) and found.value == b"v"
