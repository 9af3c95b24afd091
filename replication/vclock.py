"""Vector clocks: which of two versions of a value happened before the other, or neither.

A clock maps a node id to the number of events that node has stamped. It is immutable; the entries are
kept sorted by node id, so equal clocks are equal objects and encode to the same bytes on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Order(StrEnum):
    BEFORE = "before"  # self happened before other: other supersedes self
    AFTER = "after"  # self happened after other: self supersedes other
    EQUAL = "equal"
    CONCURRENT = "concurrent"  # neither saw the other: both are siblings


@dataclass(frozen=True)
class VectorClock:
    entries: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        nodes = [n for n, _ in self.entries]
        if nodes != sorted(set(nodes)):
            raise ValueError("vector clock entries must be sorted by node id, each node once")
        if any(c <= 0 for _, c in self.entries):
            raise ValueError("vector clock counters must be positive")

    @staticmethod
    def of(counts: Mapping[str, int]) -> VectorClock:
        return VectorClock(tuple(sorted((n, c) for n, c in counts.items() if c > 0)))

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def get(self, node_id: str) -> int:
        for n, c in self.entries:
            if n == node_id:
                return c
        return 0

    def increment(self, node_id: str) -> VectorClock:
        counts = self.as_dict()
        counts[node_id] = counts.get(node_id, 0) + 1
        return VectorClock.of(counts)

    def merge(self, other: VectorClock) -> VectorClock:
        counts = self.as_dict()
        for n, c in other.entries:
            if c > counts.get(n, 0):
                counts[n] = c
        return VectorClock.of(counts)

    def compare(self, other: VectorClock) -> Order:
        mine, theirs = self.as_dict(), other.as_dict()
        less = greater = False
        for n in mine.keys() | theirs.keys():
            a, b = mine.get(n, 0), theirs.get(n, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
        if less and greater:
            return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def descends(self, other: VectorClock) -> bool:
        """True if self has seen everything other has (after or equal)."""
        return self.compare(other) in (Order.AFTER, Order.EQUAL)


def merge_all(clocks: Iterable[VectorClock]) -> VectorClock:
    result = VectorClock()
    for clock in clocks:
        result = result.merge(clock)
    return result


def dominant(clocks: Iterable[VectorClock]) -> list[VectorClock]:
    """The clocks not strictly superseded by another: the siblings a replica must keep."""
    unique = list(dict.fromkeys(clocks))
    return [c for c in unique if not any(c.compare(o) is Order.BEFORE for o in unique)]
