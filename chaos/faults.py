"""Which faults to inject: partitions drawn as Jepsen's nemeses draw them.

The policy that applies faults to messages and clocks is ``kvstore.faults.ChaosPolicy`` (a node process
must be able to build it from its admin route, and kvstore never imports chaos); this module draws the
shapes of partitions and re-exports the policy types for the rest of chaos.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from kvstore.faults import ChaosPolicy, ClockFault, Delay

__all__ = ["PARTITION_KINDS", "ChaosPolicy", "ClockFault", "Delay", "grudge_from_groups", "partition_grudge"]

PARTITION_KINDS: tuple[str, ...] = ("halves", "isolate", "isolate-leader", "bridge", "majority-ring")


def partition_grudge(kind: str, nodes: Sequence[str], rng: random.Random, leader: str | None = None) -> (
    dict[str, set[str]]
):
    """For each node, the nodes whose traffic it drops, for a partition drawn as Jepsen's nemeses draw them."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    n = len(shuffled)
    if kind not in PARTITION_KINDS:
        raise ValueError(f"unknown partition kind {kind!r} (known: {', '.join(PARTITION_KINDS)})")
    if n < 2:
        return {x: set() for x in nodes}
    if kind == "majority-ring":
        # Each node sees a majority (itself and its nearest neighbours on a ring), but no two nodes see
        # the same majority.
        reach = (n // 2 + 1) // 2
        position = {x: i for i, x in enumerate(shuffled)}
        return {
            x: {y for y in nodes if min((position[x] - position[y]) % n, (position[y] - position[x]) % n) > reach}
            for x in nodes
        }
    return grudge_from_groups(partition_groups(kind, shuffled, leader), nodes)


def partition_groups(kind: str, shuffled: Sequence[str], leader: str | None) -> list[list[str]]:
    """Groups for the group-shaped partitions; a node in two groups (a bridge) talks to both."""
    n = len(shuffled)
    if kind in ("isolate", "isolate-leader"):
        alone = leader if kind == "isolate-leader" and leader is not None and leader in shuffled else shuffled[0]
        return [[alone], sorted(x for x in shuffled if x != alone)]
    if kind == "bridge" and n >= 3:
        # Two halves that cannot talk, and one node in the middle that talks to both.
        middle, rest = shuffled[0], shuffled[1:]
        half = len(rest) // 2
        return [sorted([*rest[:half], middle]), sorted([*rest[half:], middle])]
    half = n // 2
    return [sorted(shuffled[:half]), sorted(shuffled[half:])]


def grudge_from_groups(groups: Sequence[Sequence[str]], nodes: Sequence[str]) -> dict[str, set[str]]:
    member_of: dict[str, set[int]] = {x: set() for x in nodes}
    for i, group in enumerate(groups):
        for x in group:
            member_of[x].add(i)
    return {x: {y for y in nodes if y != x and not member_of[x] & member_of[y]} for x in nodes}
