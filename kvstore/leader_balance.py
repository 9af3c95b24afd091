"""Leader spread: a node hands leadership of a partition back to the partition's preferred owner.

The partition map names a preferred owner for every partition (the first of its replicas), and
``partitioning.rebalance`` keeps those spread evenly over the nodes. Raft elects whoever times out first,
so after a failover (or a restart: the restarted owner finds a live leader and follows) leadership piles
up on the survivors. Every ``rebalance_interval_ms`` a leader looks at each partition it leads and, where
the preferred owner is another voter that is answering and nearly caught up (within ``HANDBACK_MAX_LAG``
entries of the commit index: under a steady write load it is rarely exactly there), asks its replica to
transfer leadership there; the transfer waits for the owner to hold the whole log. A transfer to a node
that is down would refuse proposals until it times out, hence the liveness test. The target never changes
while the map does not, so leadership cannot ping-pong between two nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from partitioning.partition_map import PartitionMap
from replication.raft import LEADER, REPLICATE, RaftReplica
from replication.replica import PartitionReplica

LEADER_BALANCE_TIMER = "leaders"
# How far behind the commit index a preferred owner may be and still be handed its partition: the transfer
# refuses proposals until the owner has the whole log, so it must be close.
HANDBACK_MAX_LAG = 100


def handbacks(
    node_id: str, partition_map: PartitionMap, replicas: Mapping[int, PartitionReplica]
) -> list[tuple[int, str]]:
    """(partition, preferred owner) for every partition this node leads that its nearly caught-up owner should
    lead."""
    out: list[tuple[int, str]] = []
    for partition in sorted(replicas):
        replica = replicas[partition]
        if not isinstance(replica, RaftReplica) or replica.role != LEADER:
            continue
        owner = partition_map.owner(partition)
        if owner == node_id or owner not in replica.voters:
            continue
        progress = replica.progress.get(owner)
        if (
            progress is not None
            and progress.active
            and progress.state == REPLICATE
            and progress.match >= replica.commit
        ):
            out.append((partition, owner))
    return out
