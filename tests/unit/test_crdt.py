"""CRDT conflict policies (replication/crdt.py): joins, convergence against a model, ops, states, rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from replication import crdt
from replication.crdt import CRDT_TYPES, CrdtPolicy, policy_named, render
from replication.dvv import EMPTY, Dot, Sibling, Versions, encode, next_dot
from replication.vclock import VectorClock

NODES = ("a", "b", "c")
ELEMENTS = ("x", "y", "z", "é")
NO_CONTEXT = VectorClock()


def policy(name: str) -> CrdtPolicy[Any]:
    chosen = policy_named(name)
    assert isinstance(chosen, CrdtPolicy)
    return chosen


def op(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# ---------------------------------------------------------------- a small cluster of replicas


@dataclass
class Replicas:
    """Three replicas of one key: each coordinates writes on its own state, and merges others' states."""

    policy: CrdtPolicy[Any]
    states: dict[str, Versions | None] = field(default_factory=lambda: dict.fromkeys(NODES))
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NODES, 0))

    def write(self, node: str, value: bytes | None, timestamp_ms: int = 0) -> Dot:
        state = self.states[node]
        dot = next_dot(state, NO_CONTEXT, node, self.counters[node])
        self.counters[node] = dot[1]
        self.states[node] = self.policy.write(state, NO_CONTEXT, dot, value, timestamp_ms)
        return dot

    def sync(self, src: str, dst: str) -> None:
        source, target = self.states[src], self.states[dst]
        if source is not None:
            self.states[dst] = source if target is None else self.policy.merge(target, source)

    def value(self, node: str) -> object:
        return self.policy.value_of(self.states[node])


def op_strategy(name: str) -> st.SearchStrategy[bytes]:
    elements = st.sampled_from(ELEMENTS)
    if name == "counter":
        return st.integers(-100, 100).map(lambda n: op(increment=n))
    if name == "set":
        split = st.lists(st.tuples(elements, st.booleans()), max_size=4).map(dict)
        return split.map(
            lambda chosen: op(add=[e for e, add in chosen.items() if add], remove=[e for e, add in chosen.items() if not add])
        )
    split_fields = st.dictionaries(elements, st.one_of(st.none(), st.text(max_size=3)), max_size=3)
    return split_fields.map(
        lambda chosen: op(**{"set": {f: v for f, v in chosen.items() if v is not None}, "remove": [f for f, v in chosen.items() if v is None]})
    )


Action = tuple[str, str, str, bytes | None, int]


def actions(name: str) -> st.SearchStrategy[list[Action]]:
    nodes = st.sampled_from(NODES)
    write = st.tuples(st.just("write"), nodes, nodes, st.one_of(st.none(), op_strategy(name)), st.integers(0, 50))
    sync = st.tuples(st.just("sync"), nodes, nodes, st.none(), st.just(0))
    return st.lists(st.one_of(write, write, sync), max_size=14)


def states_of(name: str, history: list[Action]) -> list[Versions]:
    """Every state a replica holds along ``history`` (writes at each node's skewed clock, syncs between them)."""
    replicas = Replicas(policy(name))
    seen: list[Versions] = []
    for step, (kind, node, other, value, skew_ms) in enumerate(history):
        if kind == "write":
            replicas.write(node, value, 100 * step + skew_ms)
        else:
            replicas.sync(node, other)
        seen.extend(s for s in replicas.states.values() if s is not None)
    return seen or [EMPTY]


@st.composite
def three_states(draw: st.DrawFn, name: str) -> tuple[Versions, Versions, Versions]:
    seen = states_of(name, draw(actions(name)))
    pick = st.sampled_from(seen)
    return draw(pick), draw(pick), draw(pick)


# ---------------------------------------------------------------- merge is a join


@pytest.mark.parametrize("name", CRDT_TYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_merge_is_commutative_associative_idempotent(name: str, data: st.DataObject) -> None:
    chosen = policy(name)
    a, b, c = data.draw(three_states(name))
    assert chosen.merge(a, b) == chosen.merge(b, a)
    assert chosen.merge(chosen.merge(a, b), c) == chosen.merge(a, chosen.merge(b, c))
    assert chosen.merge(a, a) == a
    # The merged sibling's value is canonical: equal states are equal bytes.
    assert encode(chosen.merge(a, b)) == encode(chosen.merge(b, a))


@pytest.mark.parametrize("name", CRDT_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_delivery_order_converges(name: str, data: st.DataObject) -> None:
    """Replicas that receive the same coordinated writes, each in its own order, end with equal states."""
    chosen = policy(name)
    writes = states_of(name, data.draw(actions(name)))
    results = []
    for _ in range(3):
        order = data.draw(st.permutations(writes))
        state = order[0]
        for other in order[1:]:
            state = chosen.merge(state, other)
        results.append(state)
    assert results[0] == results[1] == results[2]


# ---------------------------------------------------------------- convergence against a model


@dataclass(frozen=True)
class Event:
    dot: Dot
    value: bytes | None
    stamps: dict[str, tuple[int, Dot]]  # map: the stamp each field the write touches gets
    known: frozenset[Dot]  # the writes the coordinator's state held


class ReplicaModel(RuleBasedStateMachine):
    """Writes, deletes and syncs in any order; every replica's value matches what the writes it holds say."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.replicas = Replicas(policy(self.name))
        self.known: dict[str, set[Dot]] = {node: set() for node in NODES}
        self.events: list[Event] = []
        self.clock_ms = 1000
        self.skew_ms: dict[str, int] = {}

    @initialize(skews=st.lists(st.integers(-300, 300), min_size=3, max_size=3))
    def skew_clocks(self, skews: list[int]) -> None:
        self.skew_ms = dict(zip(NODES, skews, strict=True))

    @rule(node=st.sampled_from(NODES), data=st.data())
    def write(self, node: str, data: st.DataObject) -> None:
        self.coordinate(node, data.draw(op_strategy(self.name)))

    @rule(node=st.sampled_from(NODES))
    def delete(self, node: str) -> None:
        self.coordinate(node, None)

    @rule(src=st.sampled_from(NODES), dst=st.sampled_from(NODES))
    def sync(self, src: str, dst: str) -> None:
        self.replicas.sync(src, dst)
        self.known[dst] |= self.known[src]

    def coordinate(self, node: str, value: bytes | None) -> None:
        self.clock_ms += 100
        timestamp_ms = self.clock_ms + self.skew_ms[node]
        known = frozenset(self.known[node])
        dot = next_dot(self.replicas.states[node], NO_CONTEXT, node, self.replicas.counters[node])
        stamps = self.map_stamps(known, value, timestamp_ms, dot) if self.name == "map" else {}
        assert self.replicas.write(node, value, timestamp_ms) == dot
        self.events.append(Event(dot, value, stamps, known))
        self.known[node].add(dot)

    def map_stamps(self, known: frozenset[Dot], value: bytes | None, timestamp_ms: int, dot: Dot) -> dict[str, Any]:
        # A write stamps a field past the register its coordinator held for it; a delete only touches live fields.
        fields = map_registers(self.events, known)
        if value is None:
            touched = [f for f, (_, v) in fields.items() if v is not None]
        else:
            parsed = json.loads(value)
            touched = [*parsed["set"], *parsed["remove"]]
        return {f: (max(timestamp_ms, fields[f][0][0] + 1) if f in fields else timestamp_ms, dot) for f in touched}

    def expected(self, known: set[Dot]) -> object:
        if self.name == "counter":
            return counter_value(self.events, known)
        if self.name == "set":
            return set_value(self.events, known)
        registers = map_registers(self.events, frozenset(known))
        return {f: v for f, (_, v) in sorted(registers.items()) if v is not None}

    @invariant()
    def each_replica_holds_what_its_writes_say(self) -> None:
        for node in NODES:
            assert self.replicas.value(node) == self.expected(self.known[node])

    @invariant()
    def full_sync_converges(self) -> None:
        states = [s for s in self.replicas.states.values() if s is not None]
        if not states:
            return
        chosen = self.replicas.policy
        forward, backward = states[0], states[-1]
        for state in states[1:]:
            forward = chosen.merge(forward, state)
        for state in reversed(states[:-1]):
            backward = chosen.merge(state, backward)
        assert forward == backward
        everything = set().union(*self.known.values())
        assert chosen.value_of(forward) == self.expected(everything)


def counter_value(events: list[Event], known: set[Dot]) -> int:
    """Every increment held, minus those a held reset had observed."""
    resets = [e.known for e in events if e.dot in known and e.value is None]
    total = 0
    for event in events:
        if event.dot in known and event.value is not None and not any(event.dot in seen for seen in resets):
            total += json.loads(event.value)["increment"]
    return total


def set_value(events: list[Event], known: set[Dot]) -> list[str]:
    """An element is in if some add of it is held that no held remove (or delete) had observed."""
    held = [e for e in events if e.dot in known]
    present = set()
    for add in held:
        for element in json.loads(add.value)["add"] if add.value is not None else []:
            cancelled = any(
                add.dot in other.known and (other.value is None or element in json.loads(other.value)["remove"])
                for other in held
            )
            if not cancelled:
                present.add(element)
    return sorted(present)


def map_registers(events: list[Event], known: frozenset[Dot]) -> dict[str, tuple[tuple[int, Dot], str | None]]:
    """Per field, the held write with the largest (stamp, dot), and the value it wrote (None: removed)."""
    registers: dict[str, tuple[tuple[int, Dot], str | None]] = {}
    for event in events:
        if event.dot not in known:
            continue
        parsed = json.loads(event.value) if event.value is not None else {"set": {}}
        for f, order in event.stamps.items():
            if f not in registers or order > registers[f][0]:
                registers[f] = (order, parsed["set"].get(f))
    return registers


class CounterModel(ReplicaModel):
    name = "counter"


class SetModel(ReplicaModel):
    name = "set"


class MapModel(ReplicaModel):
    name = "map"


_model_settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestCounterModel = _model_settings(CounterModel).TestCase
TestSetModel = _model_settings(SetModel).TestCase
TestMapModel = _model_settings(MapModel).TestCase
