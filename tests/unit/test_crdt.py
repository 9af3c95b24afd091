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
        return st.dictionaries(elements, st.booleans(), max_size=4).map(set_op)
    return st.dictionaries(elements, st.one_of(st.none(), st.text(max_size=3)), max_size=3).map(map_op)


def set_op(chosen: dict[str, bool]) -> bytes:
    """Each element added (True) or removed (False)."""
    return op(add=[e for e, add in chosen.items() if add], remove=[e for e, add in chosen.items() if not add])


def map_op(chosen: dict[str, str | None]) -> bytes:
    """Each field set to its value, or removed (None)."""
    return op(
        set={f: v for f, v in chosen.items() if v is not None}, remove=[f for f, v in chosen.items() if v is None]
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


# ---------------------------------------------------------------- each type's semantics


def test_counter_sums_increments_from_every_node() -> None:
    replicas = Replicas(policy("counter"))
    replicas.write("a", op(increment=5))
    replicas.write("b", op(increment=-2))
    replicas.write("a", op(increment=4))
    replicas.sync("a", "c")
    replicas.sync("b", "c")
    assert render(replicas.states["c"]) == b"7"


def test_counter_reset_removes_what_it_observed_and_keeps_concurrent_increments() -> None:
    replicas = Replicas(policy("counter"))
    replicas.write("a", op(increment=10))
    replicas.write("a", op(increment=-3))
    replicas.sync("a", "b")
    replicas.write("b", None)  # b saw +10 and -3
    replicas.write("a", op(increment=2))  # concurrent with the reset
    replicas.sync("b", "a")
    assert render(replicas.states["a"]) == b"2"
    # Floors stay behind: a reset counter reads 0, it is not a tombstone.
    replicas.write("c", None)
    assert render(replicas.states["c"]) == b"null"
    assert render(replicas.states["b"]) == b"0"
    assert not replicas.states["b"].deleted  # type: ignore[union-attr]


def test_set_add_wins_over_a_concurrent_remove() -> None:
    replicas = Replicas(policy("set"))
    replicas.write("a", op(add=["x", "y"]))
    replicas.sync("a", "b")
    replicas.write("b", op(remove=["x"]))
    replicas.write("a", op(add=["x"]))  # b's remove did not see this add
    replicas.sync("b", "a")
    replicas.sync("a", "b")
    assert render(replicas.states["a"]) == render(replicas.states["b"]) == b'["x","y"]'


def test_set_remove_of_an_observed_add_removes_it() -> None:
    replicas = Replicas(policy("set"))
    replicas.write("a", op(add=["x", "y"]))
    replicas.sync("a", "b")
    replicas.write("b", op(remove=["x"]))
    replicas.sync("b", "a")
    replicas.sync("a", "b")
    assert render(replicas.states["a"]) == render(replicas.states["b"]) == b'["y"]'


def test_set_delete_leaves_a_tombstone_and_concurrent_adds_survive() -> None:
    replicas = Replicas(policy("set"))
    replicas.write("a", op(add=["x"]))
    replicas.sync("a", "b")
    dot = replicas.write("b", None)
    tombstone = replicas.states["b"]
    assert tombstone is not None and tombstone.deleted
    assert tombstone.siblings == (Sibling(dot, None, 0),)
    assert render(tombstone) == b"null"
    replicas.write("c", op(add=["z"]))
    replicas.sync("c", "b")
    replicas.sync("a", "b")  # the deleted add arrives again: the tombstone's context covers it
    assert render(replicas.states["b"]) == b'["z"]'


def test_map_last_writer_wins_per_field_by_stamp_even_against_arrival_order() -> None:
    replicas = Replicas(policy("map"))
    replicas.write("a", op(set={"f": "from-a", "g": "a"}), timestamp_ms=2000)
    replicas.write("b", op(set={"f": "from-b"}), timestamp_ms=1000)  # b's clock runs behind
    replicas.sync("a", "b")
    replicas.sync("b", "a")
    assert render(replicas.states["a"]) == render(replicas.states["b"]) == b'{"f":"from-a","g":"a"}'


def test_map_write_supersedes_the_value_it_saw_despite_a_clock_behind() -> None:
    replicas = Replicas(policy("map"))
    replicas.write("a", op(set={"f": "1"}), timestamp_ms=5000)  # a's clock runs ahead
    replicas.sync("a", "b")
    replicas.write("b", op(set={"f": "2"}), timestamp_ms=1000)
    replicas.write("a", op(set={"g": "3"}), timestamp_ms=5001)
    replicas.sync("b", "a")
    assert render(replicas.states["a"]) == b'{"f":"2","g":"3"}'
    assert crdt.MapPolicy().merge(replicas.states["a"], replicas.states["b"]) == replicas.states["a"]  # type: ignore[arg-type]


def test_map_remove_is_a_stamped_tombstone() -> None:
    replicas = Replicas(policy("map"))
    replicas.write("a", op(set={"f": "old", "g": "kept"}), timestamp_ms=100)
    replicas.sync("a", "b")
    replicas.write("b", op(remove=["f"]), timestamp_ms=300)
    replicas.write("c", op(set={"f": "older"}), timestamp_ms=200)  # concurrent, stamped before the removal
    replicas.sync("b", "a")
    replicas.sync("c", "a")
    assert render(replicas.states["a"]) == b'{"g":"kept"}'
    replicas.write("c", op(set={"f": "newer"}), timestamp_ms=400)
    replicas.sync("c", "a")
    assert render(replicas.states["a"]) == b'{"f":"newer","g":"kept"}'


def test_map_delete_removes_observed_fields_only() -> None:
    replicas = Replicas(policy("map"))
    replicas.write("a", op(set={"f": "1"}), timestamp_ms=100)
    replicas.sync("a", "b")
    replicas.write("b", None, timestamp_ms=200)
    replicas.write("c", op(set={"g": "2"}), timestamp_ms=150)  # a field b never saw
    replicas.sync("b", "c")
    assert render(replicas.states["b"]) == b"{}"
    assert render(replicas.states["c"]) == b'{"g":"2"}'


@pytest.mark.parametrize("name", CRDT_TYPES)
def test_delete_of_a_missing_key_is_a_tombstone_that_merges_away(name: str) -> None:
    chosen = policy(name)
    tombstone = chosen.write(None, NO_CONTEXT, ("a", 1), None, 7)
    assert tombstone == Versions((Sibling(("a", 1), None, 7),), VectorClock.of({"a": 1}))
    live = chosen.write(None, NO_CONTEXT, ("b", 1), an_op(name), 8)
    assert chosen.merge(tombstone, live).values == live.values
    assert chosen.merge(tombstone, EMPTY) == tombstone


def an_op(name: str) -> bytes:
    return {"counter": op(increment=1), "set": op(add=["x"]), "map": op(set={"f": "v"})}[name]


def test_merged_sibling_takes_the_larger_dot_by_counter_then_node() -> None:
    chosen = policy("set")
    a = chosen.write(None, NO_CONTEXT, ("z", 3), op(add=["x"]), 10)
    b = chosen.write(None, NO_CONTEXT, ("a", 3), op(add=["y"]), 20)
    c = chosen.write(None, NO_CONTEXT, ("b", 9), op(add=["y"]), 5)
    assert chosen.merge(a, b).siblings[0].dot == ("z", 3)
    assert chosen.merge(b, c).siblings[0].dot == ("b", 9)
    assert chosen.merge(a, c).context == VectorClock.of({"b": 9, "z": 3})


def test_write_needs_a_dot_above_the_state() -> None:
    chosen = policy("counter")
    state = chosen.write(None, NO_CONTEXT, ("a", 5), op(increment=1), 0)
    with pytest.raises(ValueError, match="not above"):
        chosen.write(state, NO_CONTEXT, ("a", 5), op(increment=1), 0)


# ---------------------------------------------------------------- render and names


def test_render_outputs_exact_json() -> None:
    counter, set_, map_ = policy("counter"), policy("set"), policy("map")
    assert render(counter.write(None, NO_CONTEXT, ("a", 1), op(increment=-3), 0)) == b"-3"
    added = set_.write(None, NO_CONTEXT, ("a", 1), op(add=["b", "é", "a", "b"]), 0)
    assert render(added) == '["a","b","é"]'.encode()
    fields = map_.write(None, NO_CONTEXT, ("a", 1), op(set={"z": "1", "a": 'q"t'}), 0)
    assert render(fields) == b'{"a":"q\\"t","z":"1"}'
    assert render(None) == b"null"
    assert render(EMPTY) == b"null"


def test_policy_named() -> None:
    assert CRDT_TYPES == ("counter", "set", "map")
    assert [policy_named(name).name for name in CRDT_TYPES] == list(CRDT_TYPES)
    for name in ("siblings", "lww", "Counter", ""):
        with pytest.raises(ValueError, match="unknown CRDT type"):
            policy_named(name)


# ---------------------------------------------------------------- malformed operations


BAD_OPS = [
    ("counter", b"", "must be a JSON object"),
    ("counter", b"\xff", "must be a JSON object"),
    ("counter", b"[1]", "must be a JSON object"),
    ("counter", b'{"increment": 1.5}', "increment must be an integer"),
    ("counter", b'{"increment": true}', "increment must be an integer"),
    ("counter", b'{"increment": NaN}', "increment must be an integer"),
    ("counter", b'{"increment": 9223372036854775808}', "increment must be an integer"),
    ("counter", b"{}", 'needs "increment"'),
    ("counter", b'{"increment": 1, "by": 2}', "unknown field 'by'"),
    ("counter", b'{"increment": 1, "increment": 2}', "names a field twice"),
    ("set", b"{}", "at least one of"),
    ("set", b'{"add": "x"}', "must be a list of strings"),
    ("set", b'{"add": [1]}', "must be a string"),
    ("set", b'{"add": ["x"], "remove": ["x"]}', "both add and remove"),
    ("set", b'{"add": ["\\ud800"]}', "lone surrogate"),
    ("set", json.dumps({"add": ["x" * 1025]}).encode(), "at most 1024 bytes"),
    ("set", json.dumps({"add": [str(i) for i in range(1001)]}).encode(), "at most 1000"),
    ("set", json.dumps({"add": ["x" * 1000] * 70}).encode(), "at most 65536 bytes"),
    ("set", b"[" * 100_000 + b"]" * 100_000, "at most 65536 bytes"),
    ("set", b"[" * 30_000 + b"]" * 30_000, "nested too deeply|must be a JSON object"),
    ("map", b'{"set": ["f"]}', "must be an object"),
    ("map", b'{"set": {"f": 1}}', "must be a string"),
    ("map", b'{"set": {"f": "1"}, "remove": ["f"]}', "both set and remove"),
    ("map", b'{"remove": "f"}', "must be a list of strings"),
    ("map", b'{"put": {}}', "unknown field 'put'"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_OPS)
def test_malformed_op_is_refused(name: str, value: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(name).write(None, NO_CONTEXT, ("a", 1), value, 0)


OP_FIELDS = ("increment", "add", "remove", "set", "f")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(OP_FIELDS), inner, max_size=3),
    max_leaves=12,
)


@pytest.mark.parametrize("name", CRDT_TYPES)
@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_op_is_applied_or_refused_with_value_error(name: str, value: bytes) -> None:
    chosen = policy(name)
    state = chosen.write(None, NO_CONTEXT, ("a", 1), an_op(name), 0)
    try:
        written = chosen.write(state, NO_CONTEXT, ("a", 2), value, 0)
    except ValueError:
        return
    json.loads(render(written))


def test_a_write_past_the_entry_bound_is_refused() -> None:
    chosen = policy("set")
    state = None
    for batch in range(10):
        elements = [f"{batch}-{i}" for i in range(1000)]
        state = chosen.write(state, NO_CONTEXT, ("a", batch + 1), op(add=elements), 0)
    with pytest.raises(ValueError, match="more than 10000 entries"):
        chosen.write(state, NO_CONTEXT, ("a", 11), op(add=["one more"]), 0)
    assert chosen.write(state, NO_CONTEXT, ("a", 11), op(remove=["0-0"]), 0).values


# ---------------------------------------------------------------- malformed states (peer bytes)


def with_value(value: bytes) -> Versions:
    return Versions((Sibling(("a", 1), value, 0),), VectorClock.of({"a": 5}))


def packed(*raw: object) -> bytes:
    return msgpack.packb(list(raw), use_bin_type=True)


BAD_STATES = [
    ("counter", b"\xc1", "not an encoded CRDT state"),
    ("counter", packed("counter"), "expected \\[type, entries\\]"),
    ("counter", packed("set", [["x", [["a", 1]]]]), "holds a set state, not a counter"),
    ("counter", packed("counter", []), "not a canonical counter state"),
    ("counter", packed("counter", [["a", 1, 0, 2, 0]]), "floors above totals"),
    ("counter", packed("counter", [["b", 1, 0, 0, 0], ["a", 1, 0, 0, 0]]), "not a canonical"),
    ("counter", packed("counter", [["a", -1, 0, 0, 0]]), "non-negative 64-bit"),
    ("counter", packed("counter", [["a", 1 << 63, 0, 0, 0]]), "non-negative 64-bit"),
    ("counter", packed("counter", [["", 1, 0, 0, 0]]), "node id"),
    ("counter", b"\x92\xa7counter\x91\x95\xa1a\xcc\x07\x00\x00\x00", "not a canonical"),  # 7 not as a fixint
    ("counter", packed("counter", [["a", 1, 0, 0, 0], ["a", 1, 0, 0, 0]]), "not a canonical"),
    ("set", packed("set", [["x", [["b", 1]]]]), "not covered by the key's context"),
    ("set", packed("set", [["x", []]]), "without tags"),
    ("set", packed("set", [["x", [["a", 2], ["a", 1]]]]), "not a canonical"),
    ("set", packed("set", [[b"x", [["a", 1]]]]), "must be a string"),
    ("map", packed("map", [["f", 1, "a", 1]]), "entries of 5 items"),
    ("map", packed("map", [["f", 1, "a", 1, 7]]), "must be a string"),
    ("map", packed("map", [["f", 1, "a", 9, None]]), "not covered"),
    ("unknown", packed("gset", [["x"]]), "holds a gset state"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_STATES)
def test_malformed_state_is_refused(name: str, value: bytes, message: str) -> None:
    chosen = policy("counter" if name == "unknown" else name)
    good = chosen.write(None, NO_CONTEXT, ("b", 1), an_op(chosen.name), 0)
    with pytest.raises(ValueError, match=message):
        chosen.merge(good, with_value(value))
    with pytest.raises(ValueError, match=message):
        chosen.write(with_value(value), NO_CONTEXT, ("a", 6), an_op(chosen.name), 0)


def test_more_than_one_sibling_is_refused() -> None:
    chosen = policy("counter")
    a = chosen.write(None, NO_CONTEXT, ("a", 1), op(increment=1), 0)
    two = Versions((Sibling(("a", 1), None, 0), Sibling(("b", 1), None, 0)), VectorClock.of({"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="holds one value"):
        chosen.merge(a, two)
    with pytest.raises(ValueError, match="holds one value"):
        render(Versions((Sibling(("a", 1), a.values[0], 0), Sibling(("b", 1), a.values[0], 0)), two.context))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@pytest.mark.parametrize("name", CRDT_TYPES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_state_bytes_merge_or_raise_value_error(name: str, data: st.DataObject) -> None:
    chosen = policy(name)
    good = states_of(name, [("write", "a", "a", an_op(name), 0)])[0]
    structured = msgpack_values.map(lambda entries: packed(name, entries))
    mutated = st.builds(lambda i, b: _flip(good.values[0], i, b), st.integers(0, 200), st.integers(0, 255))
    value = data.draw(st.one_of(st.binary(max_size=40), structured, mutated))
    context = data.draw(st.dictionaries(st.sampled_from(NODES), st.integers(1, 3)).map(VectorClock.of))
    other = Versions((Sibling(("a", 1), value, 0),), context.merge(VectorClock.of({"a": 1})))
    try:
        merged = chosen.merge(good, other)
    except ValueError:
        with pytest.raises(ValueError):
            render(other)
        with pytest.raises(ValueError):
            chosen.write(other, NO_CONTEXT, ("a", 9), an_op(name), 0)
        return
    # A state that decodes is canonical: it re-encodes to the same bytes, and merges as a join.
    assert chosen.merge(other, other) == other
    assert chosen.merge(other, good) == merged
    json.loads(render(merged))


def _flip(data: bytes, index: int, byte: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([byte]) + data[index + 1 :]
