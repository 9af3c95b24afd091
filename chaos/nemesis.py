"""The nemesis: a seeded schedule of faults over time, and the code that applies it to a cluster.

The schedule alternates, as Jepsen's does: quiet for ``interval_ms``, then one fault (drawn from the
scenario's list) for ``interval_ms``, then its end, and so on until the run's duration. Every choice
(which fault, which node, which partition) is drawn from the nemesis rng when the schedule is made, so a
seed names the whole schedule; only the faults aimed at leaders look at the cluster when they strike.

Targets are the simulator and real clusters alike (``ChaosTarget``): crashes go to the target, message
and clock faults to its ``ChaosPolicy``, after which the target is told the policy changed (a real
cluster pushes it to its nodes' admin routes). A crash is of the scenario's ``crash_kind``: "process"
(kill -9: the OS keeps what the node wrote out), "power" (only what reached the device survives; the
simulator alone can do that) or "mixed" (each crash drawn as one or the other when the schedule is made).

Faults aimed at leaders (leader mode) pick their node when they strike, from what the live nodes say of
their own replicas (``chaos.leaders``): the leader of partition ``leader_partition`` if the scenario names
one, else the node that leads the most partitions.

- ``partition-isolate-leader``: cuts that node off from every other node until the fault ends (a random
  node when nobody leads).
- ``kill-leader``: crashes that node (of the crash kind above) and restarts it when the fault ends; with no
  leader it does nothing and says so in the report.

Instant faults act at their start and their end does nothing:

- ``move``: a drawn partition to a drawn node, ordered at the node serving it. If the drawn node is not an
  active member when the move strikes (a spare, or one that left), the move goes to the active member at
  the drawn node's position in the config, modulo the active count, so that it is not refused for nothing.
- ``join``: admits a configured node that is not an active member of the cluster's current view (a spare
  that never joined, one leaving or one removed), at its config address. Which one: the action's ``pick``,
  drawn when the schedule is made, modulo the candidates (in config order).
- ``leave``: drains an active member (the same ``pick`` rule), but only while more than ``min_active``
  (default 2) members are active, so the cluster keeps at least two nodes to move partitions between
  (and never drains its last one, which the node would refuse anyway). With fewer it does nothing and
  says so in the report.

The current view (``ChaosTarget.roster``) is what the live nodes' partition maps say together, so those
choices depend only on the seed and on the cluster's state: the simulator replays them exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from chaos.faults import PARTITION_KINDS, ChaosPolicy, Delay, partition_grudge
from chaos.report import FaultPeriod
from kvstore.sim.cluster import CRASH_KINDS
from kvstore.storage.simulated import CrashKind
from partitioning.partition_map import ACTIVE

FAULT_KINDS: tuple[str, ...] = (
    "crash",
    "kill-leader",
    *(f"partition-{k}" for k in PARTITION_KINDS),
    "delay",
    "drop",
    "duplicate",
    "reorder",
    "clock-skew",
    "clock-drift",
    "move",
    "join",
    "leave",
)
# Faults that happen at an instant: their start acts, their end does nothing.
INSTANT_FAULTS = frozenset({"move", "join", "leave"})
MEMBERSHIP_FAULTS = ("join", "leave")
# A pick is drawn from 0..PICK_RANGE-1; taken modulo the candidates when the fault strikes.
PICK_RANGE = 1 << 30
MIXED_CRASHES = "mixed"
CRASH_CHOICES: tuple[str, ...] = (*CRASH_KINDS, MIXED_CRASHES)


@dataclass(frozen=True)
class NemesisConfig:
    faults: tuple[str, ...] = ()
    interval_ms: int = 1000
    start_after_ms: int = 500
    delay: Delay = field(default_factory=lambda: Delay("uniform", 50, 5))
    drop_probability: float = 0.2
    duplicate_probability: float = 0.3
    reorder_probability: float = 0.3
    reorder_ms: int = 50
    clock_offset_ms: int = 2000
    clock_drift_ppm: int = 100_000
    # "process", "power", or "mixed": each crash drawn as one of the two when the schedule is made.
    crash_kind: str = "process"
    # A leave drains a member only while more than this many are active.
    min_active: int = 2
    # Leader-aimed faults strike the leader of this partition; None: the node leading the most partitions.
    leader_partition: int | None = None

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if self.crash_kind not in CRASH_CHOICES:
            raise ValueError(f"nemesis crash_kind must be one of {', '.join(CRASH_CHOICES)}, got {self.crash_kind!r}")
        partition = self.leader_partition
        if partition is not None and (type(partition) is not int or partition < 0):
            raise ValueError(f"nemesis leader_partition must be a partition number (int >= 0), not {partition!r:.40}")
        if isinstance(self.min_active, bool) or not isinstance(self.min_active, int) or self.min_active < 1:
            raise ValueError(f"nemesis min_active must be an int of at least 1, not {self.min_active!r:.40}")
        if self.interval_ms <= 0 or self.start_after_ms < 0:
            raise ValueError("nemesis interval_ms must be positive and start_after_ms not negative")
        for name in ("drop_probability", "duplicate_probability", "reorder_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"nemesis {name} must be between 0 and 1")


@dataclass(frozen=True)
class FaultAction:
    at_ms: int
    start: bool  # True: the fault begins; False: it ends
    fault: str
    node: str | None = None
    # For partitions: for each node, the nodes whose traffic it drops (sorted, for a stable schedule).
    grudge: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # For a move: the partition that moves (to ``node``).
    partition: int | None = None
    # For a join or a leave: which candidate, modulo their number when the fault strikes.
    pick: int | None = None
    # For a crash or kill-leader under mixed crashes: the kind drawn; None: the scenario's crash_kind.
    crash_kind: CrashKind | None = None

    def describe(self) -> str:
        kind = f" ({self.crash_kind})" if self.crash_kind is not None else ""
        if self.partition is not None:
            return f"{self.fault} partition {self.partition} to {self.node}"
        if self.node is not None:
            return f"{self.fault} {self.node}{kind}"
        if kind:
            return f"{self.fault}{kind}"
        if self.grudge:
            cut = ", ".join(f"{n}x{'/'.join(srcs)}" for n, srcs in self.grudge if srcs)
            return f"{self.fault} ({cut})"
        return self.fault


class ChaosTarget(Protocol):
    policy: ChaosPolicy

    def node_ids(self) -> Sequence[str]:
        ...

    def now_ms(self) -> int:
        """Time since the run started, as the history records it."""
        ...

    def crash(self, node_id: str, kind: CrashKind) -> None:
        ...

    def restart(self, node_id: str) -> None:
        ...

    def is_up(self, node_id: str) -> bool:
        ...

    def leader(self, partition: int | None) -> str | None:
        """Leader mode: the live node leading ``partition``, or (None) the one leading the most partitions, by
        ``chaos.leaders.pick_leader`` over what the live nodes say; None if none leads (or in single mode)."""
        ...

    def policy_changed(self) -> None:
        ...

    def move(self, partition: int, target: str) -> str:
        """Have the node serving ``partition`` move it to ``target``; what was done, for the report."""
        ...

    def roster(self) -> dict[str, str]:
        """Node id -> roster state ("active", "leaving", "removed") in what the live nodes know together;
        empty if no live node could say."""
        ...

    def join(self, node_id: str) -> str:
        """Have a live member admit ``node_id`` at its configured address; what was done, for the report."""
        ...

    def leave(self, node_id: str) -> str:
        """Have a live member drain ``node_id``; what was done, for the report."""
        ...


def plan(
    config: NemesisConfig, nodes: Sequence[str], duration_ms: int, rng: random.Random, partitions: int = 1
) -> list[FaultAction]:
    actions: list[FaultAction] = []
    if not config.faults:
        return actions
    at = config.start_after_ms
    while at + config.interval_ms <= duration_ms:
        fault = rng.choice(config.faults)
        node = None
        partition = None
        pick = None
        crash_kind: CrashKind | None = None
        grudge: tuple[tuple[str, tuple[str, ...]], ...] = ()
        if fault in ("crash", "kill-leader") and config.crash_kind == MIXED_CRASHES:
            crash_kind = rng.choice(CRASH_KINDS)
        if fault in ("crash", "clock-skew", "clock-drift"):
            node = rng.choice(list(nodes))
        elif fault == "move":
            partition = rng.randrange(partitions)
            node = rng.choice(list(nodes))
        elif fault in MEMBERSHIP_FAULTS:
            pick = rng.randrange(PICK_RANGE)
        elif fault.startswith("partition-") and fault != "partition-isolate-leader":
            drawn = partition_grudge(fault.removeprefix("partition-"), nodes, rng)
            grudge = tuple((n, tuple(sorted(drawn[n]))) for n in sorted(drawn))
        actions.append(FaultAction(at, True, fault, node, grudge, partition, pick, crash_kind))
        actions.append(FaultAction(at + config.interval_ms, False, fault, node, grudge, partition, pick, crash_kind))
        at += 2 * config.interval_ms
    return actions


@dataclass
class Nemesis:
    config: NemesisConfig
    target: ChaosTarget
    rng: random.Random
    # Faults that have ended, and those still active (keyed by fault and node).
    ended: list[FaultPeriod] = field(default_factory=list)
    _open: dict[tuple[str, str | None], FaultPeriod] = field(default_factory=dict)
    # The node a kill-leader crashed, to restart when the fault ends (its action names no node).
    _killed: dict[str, str] = field(default_factory=dict)

    @property
    def periods(self) -> list[FaultPeriod]:
        return sorted([*self.ended, *self._open.values()], key=lambda p: (p.start_ms, p.kind))

    def apply(self, action: FaultAction) -> None:
        if action.start:
            detail = self._start(action)
            self._open[(action.fault, action.node)] = FaultPeriod(action.fault, self.target.now_ms(), None, detail)
        else:
            self._stop(action)
            self._close((action.fault, action.node))

    def _close(self, key: tuple[str, str | None]) -> None:
        period = self._open.pop(key, None)
        if period is not None:
            self.ended.append(replace(period, end_ms=self.target.now_ms()))

    def heal_all(self) -> None:
        """End every fault: restart crashed nodes, heal partitions, calm the network, true clocks."""
        for node in self.target.node_ids():
            if not self.target.is_up(node):
                self.target.restart(node)
        policy = self.target.policy
        policy.heal()
        policy.calm()
        policy.reset_clocks()
        self.target.policy_changed()
        for key in list(self._open):
            self._close(key)

    def _start(self, action: FaultAction) -> str:
        policy = self.target.policy
        fault = action.fault
        if fault == "crash":
            assert action.node is not None
            if not self.target.is_up(action.node):
                return f"{action.node} already down"
            self.target.crash(action.node, self._crash_kind(action))
            return action.describe()
        if fault == "kill-leader":
            return self._kill_leader(action)
        if fault == "move":
            assert action.node is not None and action.partition is not None
            return self.target.move(action.partition, self._move_target(action.node))
        if fault in MEMBERSHIP_FAULTS:
            return self._membership(fault, action.pick or 0)
        if fault.startswith("partition-"):
            if fault == "partition-isolate-leader":
                leader = self.target.leader(self.config.leader_partition)
                drawn = partition_grudge("isolate-leader", self.target.node_ids(), self.rng, leader)
                grudge = {n: set(srcs) for n, srcs in drawn.items()}
            else:
                grudge = {n: set(srcs) for n, srcs in action.grudge}
            policy.cut(grudge)
            detail = ", ".join(f"{n} drops {'/'.join(sorted(s))}" for n, s in sorted(grudge.items()) if s)
        elif fault == "delay":
            policy.delay = self.config.delay
            detail = f"delay {self.config.delay.to_json()}"
        elif fault == "drop":
            policy.drop_probability = self.config.drop_probability
            detail = f"drop p={self.config.drop_probability}"
        elif fault == "duplicate":
            policy.duplicate_probability = self.config.duplicate_probability
            detail = f"duplicate p={self.config.duplicate_probability}"
        elif fault == "reorder":
            policy.reorder_probability = self.config.reorder_probability
            policy.reorder_ms = self.config.reorder_ms
            detail = f"reorder p={self.config.reorder_probability} up to {self.config.reorder_ms} ms"
        elif fault == "clock-skew":
            assert action.node is not None
            policy.set_clock(action.node, self.target.now_ms(), offset_ms=self.config.clock_offset_ms)
            detail = f"{action.node} clock {self.config.clock_offset_ms:+d} ms"
        elif fault == "clock-drift":
            assert action.node is not None
            policy.set_clock(action.node, self.target.now_ms(), drift_ppm=self.config.clock_drift_ppm)
            detail = f"{action.node} clock drifts {self.config.clock_drift_ppm} ppm"
        else:
            raise ValueError(f"unknown fault {fault!r}")
        self.target.policy_changed()
        return detail

    def _crash_kind(self, action: FaultAction) -> CrashKind:
        if action.crash_kind is not None:
            return action.crash_kind
        # A mixed crash kind is drawn into every crash action when planned, so this is one of CRASH_KINDS.
        return CRASH_KINDS[CRASH_KINDS.index(self.config.crash_kind)]

    def _kill_leader(self, action: FaultAction) -> str:
        partition = self.config.leader_partition
        whose = "the most partitions" if partition is None else f"partition {partition}"
        leader = self.target.leader(partition)
        if leader is None:
            return f"kill-leader: no live node leads {whose}"
        kind = self._crash_kind(action)
        self.target.crash(leader, kind)
        self._killed[action.fault] = leader
        return f"kill-leader {leader} (leads {whose}; {kind} crash)"

    def _move_target(self, drawn: str) -> str:
        """``drawn`` if it is an active member (or nobody can say), else the active member at its position."""
        nodes = list(self.target.node_ids())
        roster = self.target.roster()
        active = [n for n in nodes if roster.get(n) == ACTIVE]
        if not active or drawn in active or drawn not in nodes:
            return drawn
        return active[nodes.index(drawn) % len(active)]

    def _membership(self, fault: str, pick: int) -> str:
        roster = self.target.roster()
        if not roster:
            return f"{fault}: no live node to ask who is a member"
        nodes = list(self.target.node_ids())
        active = [n for n in nodes if roster.get(n) == ACTIVE]
        if fault == "join":
            candidates = [n for n in nodes if roster.get(n) != ACTIVE]
            if not candidates:
                return "join: every configured node is an active member"
            return self.target.join(candidates[pick % len(candidates)])
        if len(active) <= self.config.min_active:
            return f"leave: {len(active)} active member(s), and at least {self.config.min_active} stay"
        return self.target.leave(active[pick % len(active)])

    def _stop(self, action: FaultAction) -> None:
        policy = self.target.policy
        fault = action.fault
        if fault in INSTANT_FAULTS:
            return
        if fault in ("crash", "kill-leader"):
            node = action.node if fault == "crash" else self._killed.pop(fault, None)
            if node is not None and not self.target.is_up(node):
                self.target.restart(node)
            return
        if fault.startswith("partition-"):
            policy.heal()
        elif fault in ("clock-skew", "clock-drift"):
            policy.reset_clocks()
        else:
            policy.calm()
        self.target.policy_changed()


def describe_schedule(actions: Sequence[FaultAction]) -> list[dict[str, Any]]:
    return [{"at_ms": a.at_ms, "start": a.start, "fault": a.describe()} for a in actions]
