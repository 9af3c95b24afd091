"""Rebalance planning: turn one replica layout into another with the fewest data moves.

Pure and sans-IO: stdlib only, no clock, no randomness, deterministic output for a given input.

A *layout* maps a partition id to its replica node ids, preferred owner first (the shape of
`PartitionMap.replicas`, keyed by partition). The node executes a `Plan` by streaming each `Copy`
(partition data from a current replica to a node that will hold it, in bounded chunks), flipping
ownership with a new map epoch once every copy is done, and only then executing the `Drop`s.

Three functions:

- `plan(current, target)`: the minimal action list. Per partition, one `Copy` per node in the target but
  not in the current replica set, one `Drop` per node in the current set but not in the target. The number
  of copies is the sum over partitions of |target - current|, which is the minimum: every node that gains
  a partition must receive its data once. A copy is sourced from a replica that is leaving the partition
  (it has nothing else to do), else from the current preferred owner, else from the first other current
  replica. Actions are ordered by partition, copies before drops (drops run after the flip).
- `balance(current, nodes, replicas, sizes, tolerance)`: a target layout that changes as few replicas as
  it can while putting every partition on `min(replicas, len(nodes))` distinct live nodes and each node's
  load within `tolerance` of its weighted fair share where the greedy can reach it.
- `schedule(plan, max_per_node)`: the plan's copies in waves, no node the source or target of more than
  `max_per_node` copies in one wave.

Decisions and refinements over the first design:

- `plan` refuses (ValueError) partitions present in only one of the two layouts. A partition only in the
  target has no replica to copy from; a split partition must first appear on its parent's replicas (the
  split itself moves no data), then its move is planned. A partition only in the current layout would be
  dropped with all its data; removing a partition (a merge) is not a rebalance. `plan` also refuses a
  partition with no replicas in either layout.
- `plan(..., unavailable=nodes)`: nodes that cannot serve as a copy source (crashed or departed). Without
  it the "leaving replica first" rule would pick exactly the dead node that `balance` replaced. A partition
  that must be copied and has no available current replica is refused: its data is gone.
- `balance` accepts partitions with no replicas (placed from scratch, so `balance({p: () ...})` bootstraps
  a layout) and more replicas than wanted (trimmed from the most loaded non-preferred holders).
- Load is the sum of the partition sizes a node holds (`sizes`, which must cover every partition), or the
  replica count when `sizes` is None. A node's fair share is the total load times its weight share,
  water-filled so that no node's share exceeds what it can hold (one replica of every partition).
  "Within tolerance" means |load - share| <= tolerance * share.
- The greedy improves the objective sum((load - share)^2 / share) over nodes, and stops as soon as every
  node is within tolerance (fewest moves; tolerance 0 balances as far as the greedy gets) or when no single
  move from an over-loaded to an under-loaded node strictly improves it. Each step takes the most
  over-loaded node (relative to its share) that has an improving move and applies its best move (largest
  decrease; a follower replica before a preferred owner's, then lowest partition, then node id). Moves go
  only to under-loaded nodes, so a join of an empty node moves replicas only to it, and a leave from a
  balanced layout only re-places the departed node's replicas (unless that leaves a node out of
  tolerance). Both stopping rules depend on the state alone, so `balance` is idempotent: its own output
  comes back unchanged.
- Preferred owners (leaders) are kept when they keep their replica. A partition that lost its leader gets
  the member with the least leader load relative to its share; then, if a node leads outside tolerance of
  its leader share (load-weighted like replicas, capped by what the node holds), leadership moves to
  under-leading co-replicas with the same greedy. That reorders replicas and moves no data.
- Replacements take the replaced node's position in the replica tuple; a new leader moves to the front
  and the others keep their relative order.
- `schedule` fills each wave first-fit, taking first the copies whose busiest endpoint has the most copies
  left (so the busiest node is never starved), and lists each wave in plan order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

Layout: TypeAlias = Mapping[int, tuple[str, ...]]

# Relative slack for float comparisons of loads against shares and of objective changes.
_EPS = 1e-9


@dataclass(frozen=True)
class Copy:
    """Stream `partition` from `source` (a current replica) to `target` (a node that will hold it)."""

    partition: int
    source: str
    target: str


@dataclass(frozen=True)
class Drop:
    """After the ownership flip, `node` no longer holds `partition` and discards its copy."""

    partition: int
    node: str


Action: TypeAlias = Copy | Drop


@dataclass(frozen=True)
class Plan:
    """Copies (before the flip) then drops (after it), turning `before` into `after`."""

    actions: tuple[Action, ...]
    before: Layout
    after: Layout

    @property
    def copies(self) -> tuple[Copy, ...]:
        return tuple(a for a in self.actions if isinstance(a, Copy))

    @property
    def drops(self) -> tuple[Drop, ...]:
        return tuple(a for a in self.actions if isinstance(a, Drop))


def _checked_layout(layout: Layout, name: str, *, allow_empty: bool) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for p in sorted(layout):
        nodes = tuple(layout[p])
        if not nodes and not allow_empty:
            raise ValueError(f"{name} layout: partition {p} has no replicas")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"{name} layout: partition {p} lists a node twice: {nodes}")
        out[p] = nodes
    return out


def plan(current: Layout, target: Layout, *, unavailable: Collection[str] = frozenset()) -> Plan:
    """The fewest copies and drops that turn `current` into `target` (see the module docstring)."""
    cur = _checked_layout(current, "current", allow_empty=False)
    tgt = _checked_layout(target, "target", allow_empty=False)
    only_target = sorted(tgt.keys() - cur.keys())
    if only_target:
        raise ValueError(
            f"partitions {only_target} are in the target layout but not the current one: there is no replica to"
            " copy them from (place a split partition on its parent's replicas first, then plan its move)"
        )
    only_current = sorted(cur.keys() - tgt.keys())
    if only_current:
        raise ValueError(
            f"partitions {only_current} are in the current layout but not the target: planning them away would"
            " drop their data (removing a partition is not a rebalance)"
        )
    down = frozenset(unavailable)
    copies: list[Action] = []
    drops: list[Action] = []
    for p, before in cur.items():
        after = tgt[p]
        joining = [n for n in after if n not in before]
        leaving = [n for n in before if n not in after]
        if joining:
            live = [n for n in before if n not in down]
            if not live:
                raise ValueError(
                    f"partition {p}: no available replica to copy from (replicas {before} all unavailable)"
                )
            live_leaving = [n for n in leaving if n not in down]
            for i, node in enumerate(joining):
                source = live_leaving[i] if i < len(live_leaving) else live[0]
                copies.append(Copy(p, source, node))
        drops.extend(Drop(p, n) for n in leaving)
    return Plan(tuple(copies + drops), before=MappingProxyType(cur), after=MappingProxyType(tgt))


def _fair_shares(total: float, weights: Mapping[str, float], caps: Mapping[str, float]) -> dict[str, float]:
    """Split `total` in proportion to `weights`, no node above its cap (water-filling)."""
    shares: dict[str, float] = {}
    free = sorted(weights)
    remaining = float(total)
    while free:
        per_weight = max(remaining, 0.0) / sum(weights[n] for n in free)
        capped = [n for n in free if per_weight * weights[n] >= caps[n]]
        if not capped:
            shares.update((n, per_weight * weights[n]) for n in free)
            break
        for n in capped:
            shares[n] = float(caps[n])
            remaining -= caps[n]
        free = [n for n in free if n not in capped]
    return shares


class _Ledger:
    """Loads against fair shares, and the greedy that evens them out."""

    def __init__(self, weights: Mapping[str, float], shares: Mapping[str, float], tolerance: float) -> None:
        self.weights = weights
        self.shares = shares
        self.tolerance = tolerance
        self.load: dict[str, int] = dict.fromkeys(weights, 0)
        self.count: dict[str, int] = dict.fromkeys(weights, 0)
        self.slack = _EPS * max(1.0, sum(shares.values()))

    def add(self, node: str, size: int) -> None:
        self.load[node] += size
        self.count[node] += 1

    def remove(self, node: str, size: int) -> None:
        self.load[node] -= size
        self.count[node] -= 1

    def excess(self, node: str) -> float:
        return self.load[node] - self.shares[node]

    def relative(self, node: str, extra: int = 0) -> float:
        share = self.shares[node]
        return (self.load[node] + extra) / share if share > 0 else 0.0

    def placement_key(self, node: str, size: int) -> tuple[float, float, str]:
        """Lower is a better home for one more partition of `size`."""
        return (self.relative(node, size), self.count[node] / self.weights[node], node)

    def balanced(self) -> bool:
        return all(abs(self.excess(n)) <= self.tolerance * self.shares[n] + self.slack for n in self.weights)

    def over(self) -> list[str]:
        """Over-loaded nodes, most over-loaded (relative to share) first."""
        nodes = [n for n in self.weights if self.excess(n) > self.slack]
        return sorted(nodes, key=lambda n: (-self.excess(n) / self.shares[n], n))

    def under(self) -> list[str]:
        return sorted(n for n in self.weights if self.excess(n) < -self.slack and self.shares[n] > 0)

    def gain(self, a: str, b: str, size: int) -> float:
        """Change of sum((load - share)^2 / share) when `size` moves from `a` to `b` (negative is better)."""
        da, db, sa, sb = self.excess(a), self.excess(b), self.shares[a], self.shares[b]
        delta = (size * size - 2 * da * size) / sa + (size * size + 2 * db * size) / sb
        noise = _EPS * (size * size / sa + size * size / sb)
        return delta if delta < -noise else 0.0


def _check_balance_args(
    nodes: Mapping[str, float], replicas: int, sizes: Mapping[int, int] | None, tolerance: float
) -> None:
    if not nodes:
        raise ValueError("no nodes to balance over")
    for node, weight in nodes.items():
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"node {node!r} has weight {weight}: weights must be finite and > 0")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    if sizes is not None:
        for p, size in sizes.items():
            if size < 0:
                raise ValueError(f"partition {p} has negative size {size}")


def balance(
    current: Layout,
    nodes: Mapping[str, float],
    replicas: int,
    sizes: Mapping[int, int] | None = None,
    tolerance: float = 0.1,
) -> dict[int, tuple[str, ...]]:
    """A layout close to `current` with `min(replicas, len(nodes))` replicas per partition, all on `nodes`
    (node id -> weight), each node's load within `tolerance` of its weighted share where the greedy gets
    there. See the module docstring for the rules."""
    _check_balance_args(nodes, replicas, sizes, tolerance)
    layout = _checked_layout(current, "current", allow_empty=True)
    if sizes is None:
        size = dict.fromkeys(layout, 1)
    else:
        missing = sorted(layout.keys() - sizes.keys())
        if missing:
            raise ValueError(f"sizes has no entry for partitions {missing}")
        size = {p: int(sizes[p]) for p in layout}
    weights = {n: float(nodes[n]) for n in sorted(nodes)}
    want = min(replicas, len(weights))
    total_size = sum(size.values())

    replica_ledger = _Ledger(
        weights, _fair_shares(want * total_size, weights, dict.fromkeys(weights, total_size)), tolerance
    )
    members: dict[int, list[str]] = {}
    leaderless: set[int] = set()
    for p, before in layout.items():
        members[p] = [n for n in before if n in weights]
        if not before or before[0] not in weights:
            leaderless.add(p)
        for n in members[p]:
            replica_ledger.add(n, size[p])
    held: dict[str, set[int]] = {n: set() for n in weights}
    for p, ms in members.items():
        for n in ms:
            held[n].add(p)

    # Too many replicas: drop followers on the most loaded nodes.
    for p, ms in members.items():
        while len(ms) > want:
            victim = max(ms[1:], key=lambda n: replica_ledger.placement_key(n, 0))
            ms.remove(victim)
            held[victim].discard(p)
            replica_ledger.remove(victim, size[p])

    # Too few (replicas on departed nodes, or new partitions): least loaded eligible nodes, largest first.
    for p in sorted(members, key=lambda q: (-size[q], q)):
        ms = members[p]
        slots = [i for i, n in enumerate(layout[p]) if n not in weights]
        while len(ms) < want:
            node = min((n for n in weights if n not in ms), key=lambda n: replica_ledger.placement_key(n, size[p]))
            # The replacement takes a departed node's place in the order, if there is one.
            ms.insert(min(slots.pop(0), len(ms)) if slots else len(ms), node)
            held[node].add(p)
            replica_ledger.add(node, size[p])

    # Even out the loads: one replica at a time from the most over-loaded node to an under-loaded one.
    while not replica_ledger.balanced():
        move = _best_replica_move(replica_ledger, members, held, size, leaderless)
        if move is None:
            break
        p, a, b = move
        index = members[p].index(a)
        members[p][index] = b
        if index == 0:
            leaderless.add(p)
        held[a].discard(p)
        held[b].add(p)
        replica_ledger.remove(a, size[p])
        replica_ledger.add(b, size[p])

    _spread_leaders(members, leaderless, size, weights, replica_ledger.load, tolerance)
    return {p: tuple(ms) for p, ms in members.items()}


def _best_replica_move(
    ledger: _Ledger,
    members: Mapping[int, list[str]],
    held: Mapping[str, set[int]],
    size: Mapping[int, int],
    leaderless: Collection[int],
) -> tuple[int, str, str] | None:
    under = ledger.under()
    for a in ledger.over():
        best: tuple[float, bool, int, str] | None = None
        for p in sorted(held[a]):
            if size[p] == 0:
                continue
            leads = members[p][0] == a and p not in leaderless
            for b in under:
                if b in members[p]:
                    continue
                key = (ledger.gain(a, b, size[p]), leads, p, b)
                if key[0] < 0 and (best is None or key < best):
                    best = key
        if best is not None:
            return best[2], a, best[3]
    return None


def _spread_leaders(
    members: dict[int, list[str]],
    leaderless: Collection[int],
    size: Mapping[int, int],
    weights: Mapping[str, float],
    replica_load: Mapping[str, int],
    tolerance: float,
) -> None:
    """Pick leaders for partitions that lost theirs, then move leadership off nodes that lead too much."""
    total = sum(size[p] for p in members if members[p])
    ledger = _Ledger(weights, _fair_shares(total, weights, replica_load), tolerance)
    for p, ms in members.items():
        if ms and p not in leaderless:
            ledger.add(ms[0], size[p])
    for p in sorted((q for q in leaderless if members[q]), key=lambda q: (-size[q], q)):
        ms = members[p]
        leader = min(ms, key=lambda n: (*ledger.placement_key(n, size[p])[:2], ms.index(n)))
        ms.remove(leader)
        ms.insert(0, leader)
        ledger.add(leader, size[p])

    led: dict[str, set[int]] = {n: set() for n in weights}
    for p, ms in members.items():
        if ms:
            led[ms[0]].add(p)
    while not ledger.balanced():
        move = _best_leader_move(ledger, members, led, size)
        if move is None:
            break
        p, a, b = move
        ms = members[p]
        i = ms.index(b)
        ms[0], ms[i] = b, a
        led[a].discard(p)
        led[b].add(p)
        ledger.remove(a, size[p])
        ledger.add(b, size[p])


def _best_leader_move(
    ledger: _Ledger, members: Mapping[int, list[str]], led: Mapping[str, set[int]], size: Mapping[int, int]
) -> tuple[int, str, str] | None:
    under = set(ledger.under())
    for a in ledger.over():
        best: tuple[float, int, str] | None = None
        for p in sorted(led[a]):
            if size[p] == 0:
                continue
            for b in members[p][1:]:
                if b not in under:
                    continue
                key = (ledger.gain(a, b, size[p]), p, b)
                if key[0] < 0 and (best is None or key < best):
                    best = key
        if best is not None:
            return best[1], a, best[2]
    return None


def schedule(plan: Plan, max_per_node: int) -> tuple[tuple[Copy, ...], ...]:
    """The plan's copies in waves; in each wave no node is the source or target of more than `max_per_node`."""
    if max_per_node < 1:
        raise ValueError(f"max_per_node must be >= 1, got {max_per_node}")
    remaining = list(plan.copies)
    waves: list[tuple[Copy, ...]] = []
    while remaining:
        left = Counter[str]()
        for c in remaining:
            left[c.source] += 1
            left[c.target] += 1

        busy = Counter[str]()
        chosen: set[int] = set()
        urgency = [
            (-max(left[c.source], left[c.target]), -(left[c.source] + left[c.target]), i)
            for i, c in enumerate(remaining)
        ]
        for *_, i in sorted(urgency):
            c = remaining[i]
            if busy[c.source] < max_per_node and busy[c.target] < max_per_node:
                busy[c.source] += 1
                busy[c.target] += 1
                chosen.add(i)
        waves.append(tuple(c for i, c in enumerate(remaining) if i in chosen))
        remaining = [c for i, c in enumerate(remaining) if i not in chosen]
    return tuple(waves)
