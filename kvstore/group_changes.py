"""Leader mode: the membership changes of the Raft groups this node leads, toward the rebalancer's target.

A partition's replicas change only through its Raft group (``replication/raft_membership.py``), and only its
leader proposes, one change at a time: add a missing node as a learner, promote it once it caught up (the
leader refuses before, and the next turn asks again), then remove a node the target no longer wants. A leader
that must itself leave hands leadership to a node the target keeps first; the new leader goes on. So a group
goes from 3 voters to 3 voters and a learner, 4 voters, 3 voters, never through a configuration whose majority
misses the previous one's.

When a change applies, the leader's node puts the group's new members into the partition map's entry
(voters in their order, learners last; the epoch bumped) and announces it: every node learns from the map
whether it now holds a replica of the partition (a learner's is created empty and caught up from the leader's
log) or no longer does (its replica is dropped; the change committed before the map said so). A leader whose
configuration differs from its map's entry (a change applied just before its node crashed, a map that never
arrived) writes its configuration into the map on its next turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from partitioning.partition_map import PartitionMap
from replication.raft import LEADER, RaftReplica
from replication.raft_membership import ADD_LEARNER, PROMOTE, REMOVE, ChangeReplicas, Configuration
from replication.raft_messages import TransferLeader
from replication.replica import ClientCall, PartitionReplica

# How many of its groups a node changes at once: each new learner copies a partition's log from its leader.
GROUP_CHANGES_AT_ONCE = 4

GroupOp = ChangeReplicas | TransferLeader


def next_change(node_id: str, target: tuple[str, ...], config: Configuration) -> GroupOp | None:
    """The next single step from ``config`` (led by ``node_id``) toward the replicas ``target``; None if there."""
    wanted = set(target)
    for learner in config.learners:
        return ChangeReplicas(PROMOTE if learner in wanted else REMOVE, learner)
    missing = [n for n in target if n not in config.voters]
    if missing:
        return ChangeReplicas(ADD_LEARNER, missing[0])
    extra = [v for v in config.voters if v not in wanted]
    others = [v for v in extra if v != node_id]
    if others:
        return ChangeReplicas(REMOVE, others[0])
    if extra:
        return TransferLeader(next(v for v in target if v != node_id))
    return None


def map_for(partition_map: PartitionMap, partition: int, config: Configuration) -> PartitionMap | None:
    """``partition_map`` with ``partition``'s replicas made ``config``'s members (the kept ones in their order,
    the new ones after), its epoch bumped; None if the map says so already."""
    current = partition_map.replicas[partition]
    members = config.members
    replicas = (*(n for n in current if n in members), *(n for n in members if n not in current))
    if replicas == current:
        return None
    return partition_map.with_entry(partition, replicas, partition_map.epoch_of(partition) + 1)


class GroupChanger:
    """The changes this node's leaders have proposed and not seen answered (token -> partition)."""

    def __init__(self, node_id: str, max_at_once: int = GROUP_CHANGES_AT_ONCE) -> None:
        self._node_id = node_id
        self._max_at_once = max_at_once
        self._pending: dict[int, int] = {}

    def owns(self, token: int) -> bool:
        return token in self._pending

    def due(
        self,
        partition_map: PartitionMap,
        target: Mapping[int, tuple[str, ...]],
        replicas: Mapping[int, PartitionReplica],
    ) -> bool:
        """Whether a group this node leads is not where ``target`` wants it, or its map entry lags; or whether it
        leads one that is not settled yet (a new leader: look again once it knows its group's latest members)."""
        for partition, replica in replicas.items():
            if isinstance(replica, RaftReplica) and replica.role == LEADER:
                if not replica.config_settled:
                    return True
                config = replica.config
                if map_for(partition_map, partition, config) or next_change(self._node_id, target[partition], config):
                    return True
        return False

    def turn(
        self,
        partition_map: PartitionMap,
        target: Mapping[int, tuple[str, ...]],
        replicas: Mapping[int, PartitionReplica],
        new_token: Callable[[], int],
    ) -> tuple[PartitionMap | None, list[tuple[int, ClientCall]]]:
        """The map with every led group's configuration written in (None if it lags nowhere), and the calls that
        start the next step of groups not at their target, as many as may run at once."""
        repaired = partition_map
        calls: list[tuple[int, ClientCall]] = []
        busy = set(self._pending.values())
        for partition in sorted(replicas):
            replica = replicas[partition]
            if not isinstance(replica, RaftReplica) or not replica.config_settled or partition in busy:
                continue
            repaired = map_for(repaired, partition, replica.config) or repaired
            if len(busy) >= self._max_at_once:
                continue
            op = next_change(self._node_id, target[partition], replica.config)
            if op is not None:
                token = new_token()
                self._pending[token] = partition
                busy.add(partition)
                calls.append((partition, ClientCall(token, op)))
        return (None if repaired is partition_map else repaired), calls

    def answered(self, token: int, result: object, partition_map: PartitionMap) -> PartitionMap | None:
        """A proposed change was answered: the map with the group's new members if it applied, else None (refused,
        not caught up yet, leadership lost: a later turn looks again)."""
        partition = self._pending.pop(token)
        if isinstance(result, Configuration):
            return map_for(partition_map, partition, result)
        return None

    def forget(self, partition: int) -> None:
        """This node's replica of ``partition`` is gone: its answers will never come."""
        self._pending = {t: p for t, p in self._pending.items() if p != partition}
