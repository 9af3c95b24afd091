"""Which nodes hold each partition, stamped with an epoch.

Every partition lists its replicas (first = preferred owner); nothing assumes a key has one copy, even
though the foundation's single-copy mode assigns exactly one. A later rebalance produces a map with a
higher epoch; nodes and clients keep the newest epoch they have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from partitioning.hash_partitioner import key_hash


@dataclass(frozen=True)
class PartitionMap:
    epoch: int
    # replicas[p] = the node ids holding partition p, preferred owner first.
    replicas: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError("a partition map needs at least one partition")
        for p, nodes in enumerate(self.replicas):
            if not nodes:
                raise ValueError(f"partition {p} has no replicas")
            if len(set(nodes)) != len(nodes):
                raise ValueError(f"partition {p} lists a node twice: {nodes}")

    @property
    def partition_count(self) -> int:
        return len(self.replicas)

    def partition_for_key(self, key: str) -> int:
        # hash_partitioner.partition_for_key inlined (a map always has a partition): one call per op less.
        return key_hash(key) % len(self.replicas)

    def owner(self, partition: int) -> str:
        return self.replicas[partition][0]

    def partitions_of(self, node_id: str) -> tuple[int, ...]:
        """Partitions for which ``node_id`` holds a replica, ascending."""
        return tuple(p for p, nodes in enumerate(self.replicas) if node_id in nodes)

    def owned_by(self, node_id: str) -> tuple[int, ...]:
        """Partitions whose preferred owner is ``node_id``, ascending."""
        return tuple(p for p, nodes in enumerate(self.replicas) if nodes[0] == node_id)

    @staticmethod
    def round_robin(node_ids: tuple[str, ...], partitions: int, replication_factor: int = 1) -> PartitionMap:
        """Partition p on nodes p, p+1, ... (mod n), in the order given: the same map on every node."""
        if not node_ids:
            raise ValueError("no nodes to assign partitions to")
        if not 1 <= replication_factor <= len(node_ids):
            raise ValueError(f"replication factor {replication_factor} needs 1..{len(node_ids)} nodes")
        n = len(node_ids)
        replicas = tuple(tuple(node_ids[(p + i) % n] for i in range(replication_factor)) for p in range(partitions))
        return PartitionMap(epoch=1, replicas=replicas)
