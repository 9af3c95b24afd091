"""Message and clock faults: one policy object that both drivers consult for every peer message.

``ChaosPolicy`` implements kvstore's ``FaultPolicy``. The simulator calls it inside its event loop; a
real node's peer transport calls it before sending (switched through the admin route). Its state is
changed by the nemesis at scheduled times: which links are cut, how messages are delayed, dropped,
duplicated and reordered, and how far each node's clock is skewed or drifting.

Delays it returns are *added* to the carrier's own latency. Every random choice comes from the rng it
was given, so in the simulator the same seed makes the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kvstore.messages import Message

DelayKind = Literal["none", "fixed", "uniform", "exponential"]
PartitionKind = Literal["halves", "isolate", "isolate-leader", "bridge", "majority-ring"]
PARTITION_KINDS: tuple[str, ...] = ("halves", "isolate", "isolate-leader", "bridge", "majority-ring")
# An exponential delay is capped so that one unlucky draw cannot hold a message for ever.
MAX_DELAY_MS = 60_000


@dataclass(frozen=True)
class Delay:
    kind: DelayKind = "none"
    ms: int = 0  # fixed: the delay; uniform: the upper bound; exponential: the mean
    min_ms: int = 0  # uniform: the lower bound

    def sample(self, rng: random.Random) -> int:
        if self.kind == "none":
            return 0
        if self.kind == "fixed":
            return self.ms
        if self.kind == "uniform":
            return rng.randint(self.min_ms, self.ms)
        if self.kind == "exponential":
            return min(MAX_DELAY_MS, int(rng.expovariate(1.0 / self.ms))) if self.ms > 0 else 0
        raise ValueError(f"unknown delay kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ms": self.ms, "min_ms": self.min_ms}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Delay:
        kind = data.get("kind", "none")
        if kind not in ("none", "fixed", "uniform", "exponential"):
            raise ValueError(f"delay kind must be none, fixed, uniform or exponential, got {kind!r}")
        ms, min_ms = int(data.get("ms", 0)), int(data.get("min_ms", 0))
        if ms < 0 or min_ms < 0 or (kind == "uniform" and min_ms > ms):
            raise ValueError("delay bounds must be non-negative with min_ms <= ms")
        return Delay(kind, ms, min_ms)


@dataclass
class ClockFault:
    offset_ms: int = 0
    drift_ppm: int = 0  # parts per million: 1000 = the clock gains 1 ms every second
    since_ms: int = 0

    def offset_at(self, now_ms: int) -> int:
        return self.offset_ms + (now_ms - self.since_ms) * self.drift_ppm // 1_000_000


@dataclass
class ChaosPolicy:
    rng: random.Random
    cut_links: set[tuple[str, str]] = field(default_factory=set)
    delay: Delay = field(default_factory=Delay)
    link_delays: dict[tuple[str, str], Delay] = field(default_factory=dict)
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    # Reordering: this fraction of messages gets an extra uniform delay up to reorder_ms.
    reorder_probability: float = 0.0
    reorder_ms: int = 0
    clocks: dict[str, ClockFault] = field(default_factory=dict)

    # ------------------------------------------------------------ FaultPolicy

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        link = (msg.src, msg.dst)
        if link in self.cut_links:
            return ()
        if self.drop_probability and self.rng.random() < self.drop_probability:
            return ()
        copies = 2 if self.duplicate_probability and self.rng.random() < self.duplicate_probability else 1
        return tuple(self._delay_for(link) for _ in range(copies))

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        clock = self.clocks.get(node_id)
        return 0 if clock is None else clock.offset_at(now_ms)

    def _delay_for(self, link: tuple[str, str]) -> int:
        delay = self.link_delays.get(link, self.delay).sample(self.rng)
        if self.reorder_probability and self.rng.random() < self.reorder_probability:
            delay += self.rng.randint(0, self.reorder_ms)
        return delay

    # ------------------------------------------------------------ changes the nemesis makes

    def cut(self, grudge: dict[str, set[str]]) -> None:
        """Cut every link ``src -> dst`` where ``src`` is in ``grudge[dst]`` (dst drops traffic from src)."""
        self.cut_links = {(src, dst) for dst, sources in grudge.items() for src in sources}

    def heal(self) -> None:
        self.cut_links = set()

    def set_clock(self, node_id: str, now_ms: int, offset_ms: int = 0, drift_ppm: int = 0) -> None:
        self.clocks[node_id] = ClockFault(offset_ms, drift_ppm, now_ms)

    def reset_clocks(self) -> None:
        self.clocks = {}

    def calm(self) -> None:
        """No message faults at all (partitions and clocks are separate: heal() / reset_clocks())."""
        self.delay = Delay()
        self.link_delays = {}
        self.drop_probability = self.duplicate_probability = self.reorder_probability = 0.0
        self.reorder_ms = 0

    def describe(self) -> dict[str, Any]:
        return {
            "cut_links": sorted(list(link) for link in self.cut_links),
            "delay": self.delay.to_json(),
            "drop_probability": self.drop_probability,
            "duplicate_probability": self.duplicate_probability,
            "reorder_probability": self.reorder_probability,
            "reorder_ms": self.reorder_ms,
            "clocks": {n: {"offset_ms": c.offset_ms, "drift_ppm": c.drift_ppm} for n, c in sorted(self.clocks.items())},
        }


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
