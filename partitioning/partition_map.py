"""The partition map: key -> partition -> replicas, one source of truth, with an epoch per partition.

A cluster has ``P`` fixed partitions (key -> ``key_hash(key) % P``). Each partition lists its replicas,
preferred owner first, and carries its own epoch, bumped by every change of its replicas. A partition
changes hands only through its current owner (a move fences it, then hands it over), so two changes of
one partition are never concurrent, while different partitions move independently: a per-partition
epoch orders the first, and ``merge`` (per partition, the higher epoch wins) combines the second without
a coordinator. ``epoch``, the map's version, is the membership epoch plus every partition's changes: it
grows with every change and with every merge that learns one.

Placement: a new cluster starts from ``round_robin`` (partition ``p`` on nodes ``p, p+1, ...`` in config
order: exactly balanced, the same on every node). A join or a leave changes it through
``partitioning.rebalance.balance``, which moves the fewest replicas, all to the joining node or from the
leaving one. Placing the partitions on the consistent-hash ring (``partitioning.hash_ring``) instead was
measured and not taken: 64 partitions on 5 nodes came out 1.25x to 2x the mean on the busiest node (the
ring's balanced tokens form a grid that evenly spaced partitions alias with; positions off the grid still
gave 1.3-1.4x with three replicas), against under 1.1x for ``balance``. The ring is for key-level
preference lists (leaderless replicas and hinted handoff).

The map is a value: every change returns a new map. ``to_json``/``from_json`` carry it between nodes and
to clients; ``from_json`` refuses anything malformed, since a map may come from anywhere on the network.
"""

from __future__ import annotations

from typing import Any

from partitioning.hash_partitioner import key_hash

# Bound on what from_json accepts (a map may come from another node).
MAX_PARTITIONS = 65536
MAX_REPLICAS = 16
MAX_MEMBERS = 1024
MAX_NODE_ID_CHARS = 256
_FORMAT_VERSION = 1


class PartitionMap:
    """Immutable. ``replicas[p]``: the node ids holding partition p, preferred owner first; ``epochs[p]``:
    how many times p's replicas were set (1 for the initial layout); ``members``: the cluster's nodes under
    ``membership_epoch`` (a joining node is a member before it holds anything, a leaving one stays a member
    until it holds nothing)."""

    __slots__ = ("epochs", "members", "membership_epoch", "replicas")

    def __init__(
        self,
        replicas: tuple[tuple[str, ...], ...],
        *,
        epochs: tuple[int, ...] | None = None,
        members: tuple[str, ...] | None = None,
        membership_epoch: int = 1,
    ) -> None:
        if not replicas:
            raise ValueError("a partition map needs at least one partition")
        if len(replicas) > MAX_PARTITIONS:
            raise ValueError(f"a partition map holds at most {MAX_PARTITIONS} partitions, not {len(replicas)}")
        for p, nodes in enumerate(replicas):
            if not nodes:
                raise ValueError(f"partition {p} has no replicas")
            if len(set(nodes)) != len(nodes):
                raise ValueError(f"partition {p} lists a node twice: {nodes}")
        epochs = epochs if epochs is not None else (1,) * len(replicas)
        if len(epochs) != len(replicas):
            raise ValueError(f"{len(epochs)} epochs for {len(replicas)} partitions")
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
            raise ValueError("every partition epoch must be an int of at least 1")
        if isinstance(membership_epoch, bool) or not isinstance(membership_epoch, int) or membership_epoch < 1:
            raise ValueError(f"the membership epoch must be an int of at least 1, not {membership_epoch!r}")
        holders = {node for nodes in replicas for node in nodes}
        members = tuple(sorted(holders)) if members is None else tuple(members)
        if len(set(members)) != len(members):
            raise ValueError(f"members lists a node twice: {members}")
        if not holders <= set(members):
            raise ValueError(f"replicas on nodes that are not members: {sorted(holders - set(members))}")
        self.replicas = replicas
        self.epochs = epochs
        self.members = members
        self.membership_epoch = membership_epoch

    # ------------------------------------------------------------ building

    @staticmethod
    def round_robin(node_ids: tuple[str, ...], partitions: int, replication_factor: int = 1) -> PartitionMap:
        """Partition p on nodes p, p+1, ... (mod n), in the order given: the same map on every node."""
        if not node_ids:
            raise ValueError("no nodes to assign partitions to")
        if not 1 <= replication_factor <= len(node_ids):
            raise ValueError(f"replication factor {replication_factor} needs 1..{len(node_ids)} nodes")
        n = len(node_ids)
        replicas = tuple(tuple(node_ids[(p + i) % n] for i in range(replication_factor)) for p in range(partitions))
        return PartitionMap(replicas, members=tuple(node_ids))

    def with_replicas(self, partition: int, replicas: tuple[str, ...]) -> PartitionMap:
        """This map with ``partition`` on ``replicas`` (members all), its epoch one higher."""
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < len(self.replicas):
            raise ValueError(f"partition must be an int in 0..{len(self.replicas) - 1}, not {partition!r}")
        layout = list(self.replicas)
        layout[partition] = tuple(replicas)
        epochs = list(self.epochs)
        epochs[partition] += 1
        return PartitionMap(
            tuple(layout),
            epochs=tuple(epochs),
            members=self.members,
            membership_epoch=self.membership_epoch,
        )

    def with_entry(self, partition: int, replicas: tuple[str, ...], epoch: int) -> PartitionMap:
        """This map with ``partition`` on ``replicas`` at exactly ``epoch`` (a move's target installs the entry
        its source named, whatever its own map said of the partition before)."""
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < len(self.replicas):
            raise ValueError(f"partition must be an int in 0..{len(self.replicas) - 1}, not {partition!r}")
        layout = list(self.replicas)
        layout[partition] = tuple(replicas)
        epochs = list(self.epochs)
        epochs[partition] = epoch
        return PartitionMap(
            tuple(layout),
            epochs=tuple(epochs),
            members=self.members,
            membership_epoch=self.membership_epoch,
        )

    def with_members(self, members: tuple[str, ...]) -> PartitionMap:
        """This map with ``members`` as the cluster's nodes, the membership epoch one higher."""
        return PartitionMap(
            self.replicas, epochs=self.epochs, members=tuple(members), membership_epoch=self.membership_epoch + 1
        )

    def merge(self, other: PartitionMap) -> PartitionMap:
        """What both maps know: per partition the entry with the higher epoch, and the newer membership.

        Two entries of one partition with one epoch and different replicas cannot both come from moves
        (only the owner hands a partition over, one change at a time); they are resolved the same way on
        every node all the same (the greater replica tuple), so maps converge whatever the order of merges.
        A membership that leaves out a node still holding a replica is widened to it.
        """
        if other.partition_count != self.partition_count:
            raise ValueError(
                f"cannot merge a map of {other.partition_count} partitions into one of {self.partition_count}"
            )
        replicas: list[tuple[str, ...]] = []
        epochs: list[int] = []
        for mine, my_epoch, theirs, their_epoch in zip(
            self.replicas, self.epochs, other.replicas, other.epochs, strict=True
        ):
            if (their_epoch, theirs) > (my_epoch, mine):
                replicas.append(theirs)
                epochs.append(their_epoch)
            else:
                replicas.append(mine)
                epochs.append(my_epoch)
        newer = max(self, other, key=lambda m: (m.membership_epoch, m.members))
        holders = {node for nodes in replicas for node in nodes}
        members = newer.members + tuple(sorted(holders - set(newer.members)))
        return PartitionMap(
            tuple(replicas), epochs=tuple(epochs), members=members, membership_epoch=newer.membership_epoch
        )

    # ------------------------------------------------------------ reading

    @property
    def epoch(self) -> int:
        """The map's version: the membership epoch plus every change of every partition."""
        return self.membership_epoch + sum(self.epochs) - len(self.epochs)

    @property
    def partition_count(self) -> int:
        return len(self.replicas)

    def partition_for_key(self, key: str) -> int:
        # hash_partitioner.partition_for_key inlined (a map always has a partition): one call per op less.
        return key_hash(key) % len(self.replicas)

    def owner(self, partition: int) -> str:
        return self.replicas[partition][0]

    def epoch_of(self, partition: int) -> int:
        return self.epochs[partition]

    def partitions_of(self, node_id: str) -> tuple[int, ...]:
        """Partitions for which ``node_id`` holds a replica, ascending."""
        return tuple(p for p, nodes in enumerate(self.replicas) if node_id in nodes)

    def owned_by(self, node_id: str) -> tuple[int, ...]:
        """Partitions whose preferred owner is ``node_id``, ascending."""
        return tuple(p for p, nodes in enumerate(self.replicas) if nodes[0] == node_id)

    def layout(self) -> dict[int, tuple[str, ...]]:
        """Partition -> replicas, as ``partitioning.rebalance`` takes it."""
        return dict(enumerate(self.replicas))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionMap):
            return NotImplemented
        return (
            self.replicas == other.replicas
            and self.epochs == other.epochs
            and self.members == other.members
            and self.membership_epoch == other.membership_epoch
        )

    def __hash__(self) -> int:
        return hash((self.replicas, self.epochs, self.members, self.membership_epoch))

    def __repr__(self) -> str:
        return f"PartitionMap(epoch={self.epoch}, partitions={self.partition_count}, members={list(self.members)})"

    # ------------------------------------------------------------ wire form

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "epoch": self.epoch,
            "membership_epoch": self.membership_epoch,
            "members": list(self.members),
            "replicas": [list(r) for r in self.replicas],
            "epochs": list(self.epochs),
        }

    @staticmethod
    def from_json(doc: object) -> PartitionMap:
        """The map ``to_json`` wrote; anything else is a ValueError that names what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"a partition map must be an object, not {type(doc).__name__}")
        if doc.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unknown partition map version {doc.get('version')!r:.40}")
        known = {"version", "epoch", "membership_epoch", "members", "replicas", "epochs"}
        unknown = sorted(str(k)[:40] for k in doc if k not in known)
        if unknown:
            raise ValueError(f"unknown partition map field(s): {', '.join(unknown[:5])}")
        replicas_doc = doc.get("replicas")
        if not isinstance(replicas_doc, list) or len(replicas_doc) > MAX_PARTITIONS:
            raise ValueError(f"replicas must be a list of at most {MAX_PARTITIONS} partitions")
        replicas = tuple(_node_ids(f"partition {p} replicas", r, MAX_REPLICAS) for p, r in enumerate(replicas_doc))
        epochs_doc = doc.get("epochs")
        if not isinstance(epochs_doc, list):
            raise ValueError("epochs must be a list of ints")
        members = _node_ids("members", doc.get("members"), MAX_MEMBERS)
        result = PartitionMap(
            replicas,
            epochs=tuple(epochs_doc),
            members=members,
            membership_epoch=doc.get("membership_epoch"),  # type: ignore[arg-type]  # checked by __init__
        )
        if doc.get("epoch") != result.epoch:
            raise ValueError(f"the map's epoch {doc.get('epoch')!r:.40} does not match its partitions' epochs")
        return result


def _node_ids(what: str, doc: object, most: int) -> tuple[str, ...]:
    if not isinstance(doc, list) or not 1 <= len(doc) <= most:
        raise ValueError(f"{what} must be a list of 1 to {most} node ids")
    for node_id in doc:
        if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_NODE_ID_CHARS:
            raise ValueError(f"{what}: a node id must be a str of 1 to {MAX_NODE_ID_CHARS} characters")
    return tuple(doc)
