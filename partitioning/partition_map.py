"""The partition map: key -> partition -> replicas, one source of truth, with an epoch per partition.

A cluster has ``P`` fixed partitions (key -> ``key_hash(key) % P``). Each partition lists its replicas,
preferred owner first, and carries its own epoch, bumped by every change of its replicas. A partition
changes hands only through its current owner (a move fences it, then hands it over), so two changes of
one partition are never concurrent, while different partitions move independently: a per-partition
epoch orders the first, and ``merge`` (per partition, the higher epoch wins) combines the second without
a coordinator. ``epoch``, the map's version, is the membership epoch plus every partition's changes: it
grows with every change and with every merge that learns one.

Membership is in the map too, so it travels, merges and is kept exactly as the layout is: the ``roster``
holds every node the cluster has known, each with its address, its state (``active``: takes partitions;
``leaving``: gives its partitions away; ``removed``: gone, kept so an old copy of the map cannot bring it back)
and its own version. Per node, the higher version wins a merge (a last-writer-wins register per member), so a
join ordered at one node and a leave at another merge without losing either. Founding members are at version
1; a node added later starts at 2, so the membership epoch, 1 plus every version step, counts its arrival.

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

from dataclasses import dataclass
from typing import Any

from partitioning.hash_partitioner import key_hash
from partitioning.range_map import RangeMap

# Bound on what from_json accepts (a map may come from another node).
MAX_PARTITIONS = 65536
MAX_REPLICAS = 16
MAX_MEMBERS = 1024
MAX_NODE_ID_CHARS = 256
_FORMAT_VERSION = 2


ACTIVE = "active"
LEAVING = "leaving"
REMOVED = "removed"
MEMBER_STATES = (ACTIVE, LEAVING, REMOVED)
# A later state of one version wins a tie: a removal is never undone by a concurrent copy of the same version.
_STATE_RANK = {ACTIVE: 0, LEAVING: 1, REMOVED: 2}
MAX_ADDRESS_CHARS = 300


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the roster: where it listens (``host:port``, "" if not known), whether it takes partitions
    (``active``), gives them away (``leaving``) or is gone (``removed``, kept so that an older copy of the map
    cannot bring it back), and ``version``, bumped by every change of this entry."""

    node_id: str
    address: str
    state: str
    version: int

    def newer(self, other: Member) -> Member:
        """The entry that wins a merge: the higher version, then the later state, then the greater address."""
        mine = (self.version, _STATE_RANK[self.state], self.address)
        theirs = (other.version, _STATE_RANK[other.state], other.address)
        return self if mine >= theirs else other


class PartitionMap:
    """Immutable. ``replicas[p]``: the node ids holding partition p, preferred owner first; ``epochs[p]``:
    how many times p's replicas were set (1 for the initial layout); ``roster``: every node the cluster has
    known, sorted by id, each with its own version (a per-member last-writer-wins register: changes to
    different members made on different nodes merge without losing either). ``members`` are those not
    removed; ``active`` those that take partitions. A node that holds a replica is never removed in effect:
    ``holding_members`` counts it, and it gives its partitions away like a leaving one."""

    __slots__ = ("_active", "_by_id", "_members", "_ranges", "epochs", "replicas", "roster", "starts")

    def __init__(
        self,
        replicas: tuple[tuple[str, ...], ...],
        *,
        epochs: tuple[int, ...] | None = None,
        roster: tuple[Member, ...] | None = None,
        starts: tuple[str | None, ...] | None = None,
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
        if starts is not None and (not isinstance(starts, tuple) or len(starts) != len(replicas)):
            raise ValueError("range mode needs one start (a key, or None for a free slot) per partition")
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
            raise ValueError("every partition epoch must be an int of at least 1")
        holders = {node for nodes in replicas for node in nodes}
        if roster is None:
            roster = tuple(Member(node_id, "", ACTIVE, 1) for node_id in sorted(holders))
        roster = tuple(sorted(roster, key=lambda m: m.node_id))
        if len(roster) > MAX_MEMBERS:
            raise ValueError(f"a roster holds at most {MAX_MEMBERS} nodes, not {len(roster)}")
        ids = tuple(m.node_id for m in roster)
        if len(set(ids)) != len(ids):
            raise ValueError(f"the roster lists a node twice: {ids}")
        for m in roster:
            _check_member(m)
        if not holders <= set(ids):
            raise ValueError(f"replicas on nodes that are not members: {sorted(holders - set(ids))}")
        self.replicas = replicas
        self.epochs = epochs
        self.roster = roster
        self.starts = starts
        self._ranges = None if starts is None else _range_view(starts)
        self._by_id = {m.node_id: m for m in roster}
        self._members = tuple(m.node_id for m in roster if m.state != REMOVED)
        self._active = tuple(m.node_id for m in roster if m.state == ACTIVE)

    # ------------------------------------------------------------ building

    @staticmethod
    def round_robin(
        node_ids: tuple[str, ...],
        partitions: int,
        replication_factor: int = 1,
        addresses: tuple[str, ...] | None = None,
    ) -> PartitionMap:
        """Partition p on nodes p, p+1, ... (mod n), in the order given: the same map on every node."""
        if not node_ids:
            raise ValueError("no nodes to assign partitions to")
        if not 1 <= replication_factor <= len(node_ids):
            raise ValueError(f"replication factor {replication_factor} needs 1..{len(node_ids)} nodes")
        addresses = addresses if addresses is not None else ("",) * len(node_ids)
        if len(addresses) != len(node_ids):
            raise ValueError(f"{len(addresses)} addresses for {len(node_ids)} nodes")
        n = len(node_ids)
        replicas = tuple(tuple(node_ids[(p + i) % n] for i in range(replication_factor)) for p in range(partitions))
        roster = tuple(Member(node_id, a, ACTIVE, 1) for node_id, a in zip(node_ids, addresses, strict=True))
        return PartitionMap(replicas, roster=roster)

    @staticmethod
    def range_initial(
        node_ids: tuple[str, ...], slots: int, addresses: tuple[str, ...] | None = None
    ) -> PartitionMap:
        """Range mode: ``slots`` partition slots placed round robin, slot 0 holding every key and the others free
        (a split takes a free slot its owner holds). Splits then cut the key space as the data grows."""
        layout = PartitionMap.round_robin(node_ids, slots, 1, addresses)
        return PartitionMap(layout.replicas, roster=layout.roster, starts=("",) + (None,) * (slots - 1))

    def with_split(self, partition: int, at_key: str, free_slot: int) -> PartitionMap:
        """Range mode: ``partition``'s keys from ``at_key`` on go to ``free_slot`` (a free slot on the same
        replicas); both epochs one higher. ValueError unless ``at_key`` lies strictly inside the range."""
        ranges = self._range_mode()
        self._checked_partition(partition)
        self._checked_partition(free_slot)
        if self.starts is None or self.starts[free_slot] is not None:
            raise ValueError(f"slot {free_slot} is not free")
        if self.replicas[free_slot] != self.replicas[partition]:
            raise ValueError(f"slot {free_slot} is not on partition {partition}'s replicas")
        r = ranges.range_of(partition)
        if not (r.start < at_key and (r.end is None or at_key < r.end)):
            raise ValueError(f"{at_key!r:.60} is not strictly inside partition {partition}'s range")
        return self._with_start(free_slot, at_key, also_bumped=partition)

    def with_merge(self, left: int, right: int) -> PartitionMap:
        """Range mode: ``right`` (the range just after ``left``, on the same replicas) joins ``left`` and its
        slot becomes free; both epochs one higher."""
        ranges = self._range_mode()
        self._checked_partition(left)
        self._checked_partition(right)
        if ranges.range_of(left).end is None or ranges.range_of(right).start != ranges.range_of(left).end:
            raise ValueError(f"partition {right} is not the range right after partition {left}")
        if self.replicas[left] != self.replicas[right]:
            raise ValueError(f"partitions {left} and {right} are not on the same replicas")
        return self._with_start(right, None, also_bumped=left)

    def _with_start(self, slot: int, start: str | None, also_bumped: int) -> PartitionMap:
        """This range-mode map with ``slot`` starting at ``start`` (None: free), the epochs of ``slot`` and of
        the range whose extent that changes (``also_bumped``) one higher."""
        assert self.starts is not None
        starts = list(self.starts)
        starts[slot] = start
        epochs = list(self.epochs)
        epochs[slot] += 1
        epochs[also_bumped] += 1
        return PartitionMap(self.replicas, epochs=tuple(epochs), roster=self.roster, starts=tuple(starts))

    def _range_mode(self) -> RangeMap:
        if self._ranges is None:
            raise ValueError("a hash-partitioned map has no ranges")
        return self._ranges

    def with_replicas(self, partition: int, replicas: tuple[str, ...]) -> PartitionMap:
        """This map with ``partition`` on ``replicas`` (members all), its epoch one higher."""
        self._checked_partition(partition)
        return self.with_entry(partition, replicas, self.epochs[partition] + 1)

    def with_entry(self, partition: int, replicas: tuple[str, ...], epoch: int) -> PartitionMap:
        """This map with ``partition`` on ``replicas`` at exactly ``epoch`` (a move's target installs the entry
        its source named, whatever its own map said of the partition before)."""
        self._checked_partition(partition)
        layout = list(self.replicas)
        layout[partition] = tuple(replicas)
        epochs = list(self.epochs)
        epochs[partition] = epoch
        return PartitionMap(tuple(layout), epochs=tuple(epochs), roster=self.roster, starts=self.starts)

    def with_member(self, node_id: str, state: str, address: str | None = None) -> PartitionMap:
        """This map with ``node_id`` in ``state`` (and at ``address``, if given), its roster entry one version
        higher: a join (``active``), a drain (``leaving``) or the end of one (``removed``)."""
        old = self.member(node_id)
        entry = Member(
            node_id,
            address if address is not None else (old.address if old else ""),
            state,
            # Version 1 is the founding roster's: a node added later starts at 2, so its arrival counts.
            (old.version + 1) if old else 2,
        )
        roster = (*tuple(m for m in self.roster if m.node_id != node_id), entry)
        return PartitionMap(self.replicas, epochs=self.epochs, roster=roster, starts=self.starts)

    def with_placeholder(self, node_id: str) -> PartitionMap:
        """This map naming ``node_id`` (active, no address) at version 1, below any entry a real order made, so
        that any map that knows it replaces the placeholder; for a node admitted without having heard of it."""
        if node_id in self._by_id:
            return self
        roster = (*self.roster, Member(node_id, "", ACTIVE, 1))
        return PartitionMap(self.replicas, epochs=self.epochs, roster=roster, starts=self.starts)

    def merge(self, other: PartitionMap) -> PartitionMap:
        """What both maps know: per partition the entry with the higher epoch, per member the newer entry.

        Two entries of one partition with one epoch and different replicas cannot both come from moves
        (only the owner hands a partition over, one change at a time); they are resolved the same way on
        every node all the same (the greater replica tuple), so maps converge whatever the order of merges.
        """
        if other.partition_count != self.partition_count or (other.starts is None) != (self.starts is None):
            raise ValueError(
                f"cannot merge a {other.partitioner} map of {other.partition_count} partitions into a "
                f"{self.partitioner} one of {self.partition_count}"
            )
        replicas: list[tuple[str, ...]] = []
        epochs: list[int] = []
        starts: list[str | None] = []
        my_starts = self.starts or (None,) * len(self.replicas)
        their_starts = other.starts or my_starts
        for p, (mine, my_epoch, theirs, their_epoch) in enumerate(
            zip(self.replicas, self.epochs, other.replicas, other.epochs, strict=True)
        ):
            # A slot's start travels with its entry (range mode): the newer entry brings its own.
            theirs_newer = (their_epoch, theirs, _start_key(their_starts[p])) > (
                my_epoch,
                mine,
                _start_key(my_starts[p]),
            )
            replicas.append(theirs if theirs_newer else mine)
            epochs.append(their_epoch if theirs_newer else my_epoch)
            starts.append(their_starts[p] if theirs_newer else my_starts[p])
        entries = {m.node_id: m for m in self.roster}
        for m in other.roster:
            entries[m.node_id] = entries[m.node_id].newer(m) if m.node_id in entries else m
        return PartitionMap(
            tuple(replicas),
            epochs=tuple(epochs),
            roster=tuple(entries.values()),
            starts=None if self.starts is None else tuple(starts),
        )

    def _checked_partition(self, partition: int) -> None:
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < len(self.replicas):
            raise ValueError(f"partition must be an int in 0..{len(self.replicas) - 1}, not {partition!r}")

    # ------------------------------------------------------------ reading

    @property
    def membership_epoch(self) -> int:
        """1 plus every change of every roster entry (a founding entry is at version 1, a later one starts at
        2): grows with every change of membership, and merges add up what each side knew."""
        return 1 + sum(m.version - 1 for m in self.roster)

    @property
    def epoch(self) -> int:
        """The map's version: the membership epoch plus every change of every partition."""
        return self.membership_epoch + sum(self.epochs) - len(self.epochs)

    @property
    def members(self) -> tuple[str, ...]:
        """Nodes not removed (active and leaving), by id."""
        return self._members

    @property
    def active(self) -> tuple[str, ...]:
        """Nodes that take partitions, by id."""
        return self._active

    def knows(self, node_id: str) -> bool:
        """Whether ``node_id`` is in the roster at all (removed ones too: they may still forward and hand over)."""
        return node_id in self._by_id

    def member(self, node_id: str) -> Member | None:
        return self._by_id.get(node_id)

    def address_of(self, node_id: str) -> str:
        """Where ``node_id`` listens, "" if the roster does not say."""
        m = self._by_id.get(node_id)
        return m.address if m is not None else ""

    def draining(self) -> tuple[str, ...]:
        """Nodes that hold a replica but do not take partitions (leaving, or removed while a move to them
        was under way): each must give its partitions away."""
        holders = {node for nodes in self.replicas for node in nodes}
        return tuple(m.node_id for m in self.roster if m.state != ACTIVE and m.node_id in holders)

    @property
    def partition_count(self) -> int:
        return len(self.replicas)

    @property
    def partitioner(self) -> str:
        return "hash" if self._ranges is None else "range"

    @property
    def ranges(self) -> RangeMap | None:
        """Range mode: the live slots as a ``RangeMap`` (lookups, scan plans, the split policy); None in hash
        mode."""
        return self._ranges

    def partition_for_key(self, key: str) -> int:
        ranges = self._ranges
        if ranges is None:
            # hash_partitioner.partition_for_key inlined (a map always has a partition): one call per op less.
            return key_hash(key) % len(self.replicas)
        return ranges.partition_for_key(key)

    def live(self, partition: int) -> bool:
        """Whether ``partition`` holds keys: always in hash mode, a slot with a range in range mode."""
        return self.starts is None or self.starts[partition] is not None

    def live_partitions(self) -> tuple[int, ...]:
        """The partitions that hold keys: every one in hash mode, the slots with a range in key order in range
        mode."""
        if self._ranges is None:
            return tuple(range(len(self.replicas)))
        return self._ranges.partitions

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
            and self.roster == other.roster
            and self.starts == other.starts
        )

    def __hash__(self) -> int:
        return hash((self.replicas, self.epochs, self.roster, self.starts))

    def __repr__(self) -> str:
        return f"PartitionMap(epoch={self.epoch}, partitions={self.partition_count}, members={list(self.members)})"

    # ------------------------------------------------------------ wire form

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "epoch": self.epoch,
            "membership_epoch": self.membership_epoch,
            "members": list(self.members),
            "roster": [
                {"node": m.node_id, "address": m.address, "state": m.state, "version": m.version} for m in self.roster
            ],
            "replicas": [list(r) for r in self.replicas],
            "epochs": list(self.epochs),
            **({} if self.starts is None else {"starts": list(self.starts)}),
        }

    @staticmethod
    def from_json(doc: object) -> PartitionMap:
        """The map ``to_json`` wrote; anything else is a ValueError that names what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"a partition map must be an object, not {type(doc).__name__}")
        if doc.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unknown partition map version {doc.get('version')!r:.40}")
        known = {"version", "epoch", "membership_epoch", "members", "roster", "replicas", "epochs", "starts"}
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
        roster_doc = doc.get("roster")
        if not isinstance(roster_doc, list) or not 1 <= len(roster_doc) <= MAX_MEMBERS:
            raise ValueError(f"roster must be a list of 1 to {MAX_MEMBERS} members")
        roster = tuple(_member_from_json(entry) for entry in roster_doc)
        starts_doc = doc.get("starts")
        if starts_doc is not None and not isinstance(starts_doc, list):
            raise ValueError("starts must be a list of keys or nulls")
        starts = None if starts_doc is None else tuple(starts_doc)
        result = PartitionMap(replicas, epochs=tuple(epochs_doc), roster=roster, starts=starts)
        if doc.get("epoch") != result.epoch:
            raise ValueError(f"the map's epoch {doc.get('epoch')!r:.40} does not match its partitions' epochs")
        if "members" in doc and doc["members"] != list(result.members):
            raise ValueError("members does not match the roster")
        return result


def _start_key(start: str | None) -> tuple[bool, str]:
    """A slot's start for ordering two entries of one epoch: a free slot (None) before any start, "" included."""
    return (start is not None, start or "")


def _range_view(starts: tuple[str | None, ...]) -> RangeMap:
    """The live slots of a range-mode map as a RangeMap; ValueError unless their starts tile the key space."""
    if not isinstance(starts, tuple):
        raise ValueError("starts must be a tuple")
    live: list[tuple[str, int]] = []
    for p, start in enumerate(starts):
        if start is None:
            continue
        if not isinstance(start, str):
            raise ValueError(f"partition {p}: a start must be a key or None")
        live.append((start, p))
    live.sort()
    if not live or live[0][0] != "":
        raise ValueError("no range starts at the empty key: the ranges must cover every key")
    split_points = tuple(start for start, _ in live[1:])
    return RangeMap(split_points, tuple(p for _, p in live), len(starts))


def _member_from_json(entry: object) -> Member:
    if not isinstance(entry, dict) or set(entry) != {"node", "address", "state", "version"}:
        raise ValueError("a roster entry is an object of node, address, state and version")
    member = Member(entry["node"], entry["address"], entry["state"], entry["version"])
    _check_member(member)
    return member


def _check_member(m: Member) -> None:
    if not isinstance(m.node_id, str) or not 1 <= len(m.node_id) <= MAX_NODE_ID_CHARS:
        raise ValueError(f"a node id must be a str of 1 to {MAX_NODE_ID_CHARS} characters")
    if not isinstance(m.address, str) or len(m.address) > MAX_ADDRESS_CHARS:
        raise ValueError(f"{m.node_id}: an address must be a str of at most {MAX_ADDRESS_CHARS} characters")
    if m.state not in MEMBER_STATES:
        raise ValueError(f"{m.node_id}: state must be one of {MEMBER_STATES}, not {m.state!r:.40}")
    if isinstance(m.version, bool) or not isinstance(m.version, int) or not 1 <= m.version < (1 << 62):
        raise ValueError(f"{m.node_id}: a member's version must be a positive int, not {m.version!r:.40}")


def _node_ids(what: str, doc: object, most: int) -> tuple[str, ...]:
    if not isinstance(doc, list) or not 1 <= len(doc) <= most:
        raise ValueError(f"{what} must be a list of 1 to {most} node ids")
    for node_id in doc:
        if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_NODE_ID_CHARS:
            raise ValueError(f"{what}: a node id must be a str of 1 to {MAX_NODE_ID_CHARS} characters")
    return tuple(doc)
