"""Range mode: splitting and merging the ranges a node owns, in its own storage (``single`` mode).

In range mode the partition map has a fixed number of *slots* (``cluster.partitions``); a slot either holds a
key range (its ``start``; its end is the next live start) or is free. A cluster starts with slot 0 holding
every key and the other slots free, spread over the founders like any partition. Ranges then split and
merge as the data grows and shrinks, as CockroachDB and TiKV do, decided by ``partitioning.range_map``'s
``SplitPolicy`` (thresholds from the config's ``[ranges]``, with hysteresis).

Only the owner of a range changes it, and only with slots it owns, so no two nodes ever change one slot at
once and the per-slot epochs of the map order every change:

- split ``p`` at ``k``: the owner takes one of its own free slots ``q``, moves ``p``'s records from ``k`` on
  into ``q`` in its storage, gives ``q`` the applied index of ``p`` (versions go on growing), and sets
  ``q.start = k`` with both epochs one higher;
- merge ``p`` with the range right after it, ``q``, when the owner holds both: ``q``'s records go into ``p``,
  ``p``'s applied index becomes the higher of the two, and ``q`` is free again, both epochs one higher.

Everything happens in one step, so one sync makes the moved records, the applied indexes and the map (kept
in metadata) durable together: a crash sees the change whole or not at all. A node with an older map routes
a key of the new range to the old range's owner, which is the splitter itself; it serves the key from the
new range (ops are routed by key, and the owner looks the key up in its own map). Moving a range to another
node is the ordinary partition move. Ranges that are moving, and slots that are not this node's, are never
touched. One split or merge per turn (every ``ranges.check_interval_ms``), so a turn's work is one range's.
"""

from __future__ import annotations

from collections.abc import Collection

from kvstore.storage.base import Record, Storage
from partitioning.partition_map import PartitionMap
from partitioning.range_map import Merge, RangeStats, Split, SplitPolicy

RANGES_TIMER = "ranges"
# Records read from storage per page while moving a range's records between slots.
PAGE_RECORDS = 1000


class RangeKeeper:
    """The owner's side of range splits and merges for one node."""

    def __init__(self, node_id: str, storage: Storage, policy: SplitPolicy) -> None:
        self._node_id = node_id
        self._storage = storage
        self._policy = policy
        self.splits = 0
        self.merges = 0

    def turn(self, partition_map: PartitionMap, busy: Collection[int]) -> PartitionMap | None:
        """Perform at most one due split or merge of ranges this node owns that are not ``busy`` (moving in
        or out); the new map, or None if nothing was due or possible."""
        ranges = partition_map.ranges
        if ranges is None:
            return None
        mine = {
            p
            for p in ranges.partitions
            if partition_map.replicas[p] == (self._node_id,) and p not in busy
        }
        if not mine:
            return None
        stats = self._stats(mine)
        for action in self._policy.decide(ranges, stats):
            if isinstance(action, Split):
                free = self._free_slot(partition_map, busy)
                if free is None:
                    continue  # no free slot of this node's: the split waits for one (a merge, or a move here)
                self._split(action.partition, action.at_key, free)
                self.splits += 1
                return partition_map.with_split(action.partition, action.at_key, free)
            if isinstance(action, Merge):
                self._merge(action.left, action.right)
                self.merges += 1
                return partition_map.with_merge(action.left, action.right)
        return None

    def _stats(self, partitions: Collection[int]) -> dict[int, RangeStats]:
        storage = self._storage
        sizes = storage.partition_stats()
        stats: dict[int, RangeStats] = {}
        for p in partitions:
            keys, size_bytes = sizes.get(p, (0, 0))
            median = None
            if self._policy.wants_split(RangeStats(keys, size_bytes, None)) and keys:
                median = storage.records_after(p, None, keys // 2 + 1)[-1][0]
            stats[p] = RangeStats(keys, size_bytes, median)
        return stats

    def _free_slot(self, partition_map: PartitionMap, busy: Collection[int]) -> int | None:
        for q, replicas in enumerate(partition_map.replicas):
            if replicas == (self._node_id,) and not partition_map.live(q) and q not in busy:
                return q
        return None

    def _split(self, partition: int, at_key: str, free: int) -> None:
        storage = self._storage
        self._clear(free)
        exact = storage.get_stored(partition, at_key)
        moved: list[tuple[str, Record]] = [] if exact is None else [(at_key, exact)]
        after: str | None = at_key
        while True:
            page = storage.records_after(partition, after, PAGE_RECORDS)
            moved.extend(page)
            if len(page) < PAGE_RECORDS:
                break
            after = page[-1][0]
        for key, record in moved:
            storage.write(free, key, record)
            storage.remove(partition, key)
        # The slot may have served a range before: its index only grows.
        index = max(storage.log(free).applied_index(), storage.log(partition).applied_index())
        storage.set_applied_index(free, index)

    def _merge(self, left: int, right: int) -> None:
        storage = self._storage
        after: str | None = None
        while True:
            page = storage.records_after(right, after, PAGE_RECORDS)
            for key, record in page:
                storage.write(left, key, record)
            if len(page) < PAGE_RECORDS:
                break
            after = page[-1][0]
        self._clear(right)
        index = max(storage.log(left).applied_index(), storage.log(right).applied_index())
        storage.set_applied_index(left, index)

    def _clear(self, partition: int) -> None:
        storage = self._storage
        while True:
            page = storage.records_after(partition, None, PAGE_RECORDS)
            for key, _ in page:
                storage.remove(partition, key)
            if len(page) < PAGE_RECORDS:
                return
