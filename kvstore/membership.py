"""Membership orders and the rebalancer: who is in the cluster, and which partitions each member moves.

Membership lives in the partition map's roster (``partitioning.partition_map.Member``: address, state and a
version per node), so it travels, merges and is kept exactly as the layout is. An operator's ``SetMember``
reaches any member, which applies it to its map and announces the result to every node of the roster:

- ``active``: a join (or a re-join of a removed node). The joining node needs an address other nodes can
  reach; it then gets partitions from the rebalancer.
- ``leaving``: a drain. The node takes no more partitions and gives away those it holds. Once it holds none,
  the lowest active member (or the leaving node itself) marks it ``removed``.

Refused: an unknown state, a bad address, a leave of a node the roster does not name as a member, a leave
that would leave no active member. A join of a node already active at that address changes nothing.

The rebalancer runs on every member, every ``rebalance_interval_ms``: it computes
``partitioning.rebalance.balance`` of its map over the active members (cached per map epoch) and starts a
move of each partition *it owns* that the target layout puts elsewhere, as many as the mover takes at once.
Because only an owner moves its own partitions, two members' views never order conflicting moves of one
partition; where views differ for a while (a member has not heard of another's finished move), the greedy
takes replicas from the most loaded nodes first, so a member rarely moves one of its own when another was
meant to. ``balance`` stops once every active node holds its fair share within ``SLACK_PARTITIONS`` (at most
half of it): a manual move that leaves the layout within that slack stays; one beyond it is undone. With
``[cluster] rebalance = false`` no member moves anything by itself (only the roster changes above happen).

Leader mode: nothing moves. The target is computed with the configured replica count (a group's map entry lists
a learner on top while it changes), and each partition's leader steps its Raft group toward it
(``kvstore/group_changes.py``); a partition is where the target wants it when it is on the same nodes, in any
order.

Range mode: a range counts ``LIVE_RANGE_WEIGHT`` and a free slot 1 in the balance, and a member with two free
slots or more gives one to an active member that has none, since only an owner's own free slot can take the
upper half of its range in a split.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.config import NodeAddress
from kvstore.messages import SetMember
from partitioning.partition_map import ACTIVE, LEAVING, MAX_MEMBERS, REMOVED, PartitionMap
from partitioning.rebalance import balance

REBALANCE_TIMER = "rebalance"
# How far from its fair share of partitions a node may be before the rebalancer moves one.
SLACK_PARTITIONS = 1.5
MAX_TOLERANCE = 0.5
LIVE_RANGE_WEIGHT = 8


@dataclass(frozen=True, slots=True)
class Order:
    """What a membership order did: the new map (None: nothing changed) or why it was refused."""

    new_map: PartitionMap | None
    refusal: str | None = None


def apply_order(partition_map: PartitionMap, order: SetMember) -> Order:
    """The map after ``order``, or the reason it is refused."""
    node_id, state, address = order.node_id, order.state, order.address
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 256:
        return Order(None, "a node id is a str of 1 to 256 characters")
    current = partition_map.member(node_id)
    if state == ACTIVE:
        if current is None and len(partition_map.roster) >= MAX_MEMBERS:
            return Order(None, f"the roster is full: {MAX_MEMBERS} nodes have been members of this cluster")
        if address:
            try:
                NodeAddress.parse(node_id, address)
            except ValueError as exc:
                return Order(None, str(exc))
        elif current is None or not current.address:
            return Order(None, f"{node_id} is not in the roster: a join needs its address ('host:port')")
        if current is not None and current.state == ACTIVE and address in ("", current.address):
            return Order(None)
        return Order(partition_map.with_member(node_id, ACTIVE, address or None))
    if state == LEAVING:
        if current is None or current.state == REMOVED:
            return Order(None, f"{node_id} is not a member of the cluster")
        if current.state == LEAVING:
            return Order(None)
        if partition_map.active == (node_id,):
            return Order(None, f"{node_id} is the last active member: the cluster would have nowhere to keep data")
        return Order(partition_map.with_member(node_id, LEAVING))
    return Order(None, f"state must be {ACTIVE!r} (join) or {LEAVING!r} (leave), not {state!r:.40}")


class Rebalancer:
    """One member's view of where partitions should be; see the module docstring."""

    def __init__(self, node_id: str, replication_factor: int | None = None) -> None:
        self._node_id = node_id
        # Leader mode: how many replicas a partition has (its map entry may list a learner on top while a group
        # changes); None: as many as the map's partitions have (single mode).
        self._replication_factor = replication_factor
        # The map the target was computed for (equal maps give equal targets; a same-version merge of two roster
        # changes can change a map without changing its epoch).
        # Both are asked several times per map (when the node arms its timer, then on its turn).
        self._target_map: PartitionMap | None = None
        self._target: dict[int, tuple[str, ...]] = {}
        self._moves: list[tuple[int, str]] | None = None

    def target(self, partition_map: PartitionMap) -> dict[int, tuple[str, ...]]:
        """The balanced layout for ``partition_map`` (the same map gives the same layout on every node)."""
        if partition_map != self._target_map or not self._target:
            self._target = _balanced(partition_map, self._replication_factor)
            self._target_map = partition_map
            self._moves = None
        return self._target

    def balanced(self, partition_map: PartitionMap) -> bool:
        """Whether this map needs no move: every partition where the balanced layout puts it (on the same nodes:
        in leader mode the order of a group's members is the order they joined, and its leader leads)."""
        target = self.target(partition_map)
        return all(set(target[p]) == set(replicas) for p, replicas in enumerate(partition_map.replicas))

    def moves(self, partition_map: PartitionMap) -> list[tuple[int, str]]:
        """(partition, target) for each partition this node owns that the balanced layout puts elsewhere; in
        range mode also one free slot of this node's for an active member that has none (it could not split)."""
        target = self.target(partition_map)
        if self._moves is None:
            moves = [
                (p, target[p][0])
                for p, replicas in enumerate(partition_map.replicas)
                if replicas[0] == self._node_id and target[p][0] != self._node_id
            ]
            if partition_map.ranges is not None:
                moves.extend(self._free_slot_moves(partition_map, {p for p, _ in moves}))
            self._moves = moves
        return list(self._moves)

    def _free_slot_moves(self, partition_map: PartitionMap, leaving: set[int]) -> list[tuple[int, str]]:
        free: dict[str, list[int]] = {node: [] for node in partition_map.active}
        for p, replicas in enumerate(partition_map.replicas):
            if not partition_map.live(p) and replicas[0] in free and p not in leaving:
                free[replicas[0]].append(p)
        mine = free.get(self._node_id, [])
        needy = [node for node, slots in free.items() if not slots]
        # Keep one for this node's own next split.
        if len(mine) < 2 or not needy:
            return []
        slot, to = mine[-1], needy[0]
        after = partition_map.with_entry(slot, (to,), partition_map.epoch_of(slot) + 1)
        # Only a gift the balance keeps: otherwise the rebalancers would move it back and forth for ever.
        return [(slot, to)] if _balanced(after)[slot] == (to,) else []

    def revived(self, partition_map: PartitionMap) -> PartitionMap | None:
        """With no active member left (leaves of every member ordered at once at different nodes, each allowed by
        what its map said), the lowest member becomes active again, so that the others have somewhere to give
        their partitions; None if there is an active member or this node is not the lowest."""
        members = partition_map.members
        if partition_map.active or not members or members[0] != self._node_id:
            return None
        return partition_map.with_member(self._node_id, ACTIVE)

    def changes(self, partition_map: PartitionMap) -> PartitionMap | None:
        """The roster changes due at this node (a revival, drained leavers marked removed), or None."""
        revived = self.revived(partition_map)
        finished = self.finished_leavers(revived or partition_map)
        return finished or revived

    def finished_leavers(self, partition_map: PartitionMap) -> PartitionMap | None:
        """The map with every leaving node that holds nothing marked removed, if this node is the one to do it
        (the leaving node itself, or the lowest active member); None if there is nothing to do."""
        holders = {node for nodes in partition_map.replicas for node in nodes}
        active = partition_map.active
        updated = partition_map
        for member in partition_map.roster:
            if member.state != LEAVING or member.node_id in holders:
                continue
            if member.node_id == self._node_id or (active and active[0] == self._node_id):
                updated = updated.with_member(member.node_id, REMOVED)
        return None if updated is partition_map else updated


def _balanced(partition_map: PartitionMap, replication_factor: int | None = None) -> dict[int, tuple[str, ...]]:
    active = partition_map.active
    if not active:
        return partition_map.layout()  # nowhere to move anything: keep what there is
    replicas = replication_factor or max(len(r) for r in partition_map.replicas)
    # Range mode: a range counts LIVE_RANGE_WEIGHT, a free slot 1 (free slots are spread too, so that every
    # member has slots to split into); hash mode: every partition counts 1.
    ranged = partition_map.ranges is not None
    unit = LIVE_RANGE_WEIGHT if ranged else 1
    sizes = {p: unit if partition_map.live(p) else 1 for p in range(partition_map.partition_count)}
    share = sum(sizes.values()) * min(replicas, len(active)) / len(active)
    tolerance = min(SLACK_PARTITIONS * unit / share, MAX_TOLERANCE)
    return balance(
        partition_map.layout(),
        dict.fromkeys(active, 1.0),
        replicas,
        sizes=sizes if ranged else None,
        tolerance=tolerance,
    )
