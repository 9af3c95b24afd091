"""The laws of dotted version vectors (replication/dvv.py), over generated histories of writes and merges.

A history: three replicas of one key, each coordinator keeping a partition counter (which a crash may lose),
clients writing blind or with the context of some state read earlier, and replicas merging each other's
states in any order. At every step the write laws are checked against what they predict, and at the end of
every step the merge of all replicas holds exactly the acknowledged values no later write's context covered.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from replication import dvv
from replication.dvv import EMPTY, Dot, Sibling, TooManySiblings, Versions
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3")
MAX_SIBLINGS = 3
INT64_MAX = (1 << 63) - 1


def siblings_of(state: Versions) -> set[tuple[Dot, bytes | None, int]]:
    return {(s.dot, s.value, s.timestamp_ms) for s in state.siblings}


class History(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, Versions] = dict.fromkeys(NODES, EMPTY)
        self.counters: dict[str, int] = dict.fromkeys(NODES, 0)
        # What clients read (merges of some replicas' states): the contexts later writes carry.
        self.reads: list[Versions] = [EMPTY]
        self.issued: set[Dot] = set()
        # Every acknowledged write: (its sibling, the context its client had read).
        self.acked: list[tuple[Sibling, VectorClock]] = []

    @rule(
        node=st.sampled_from(NODES),
        value=st.none() | st.binary(max_size=3),
        timestamp_ms=st.integers(0, 50),
        read=st.none() | st.integers(0),
    )
    def write(self, node: str, value: bytes | None, timestamp_ms: int, read: int | None) -> None:
        seen = VectorClock() if read is None else self.reads[read % len(self.reads)].context
        before = self.states[node]
        dot = dvv.next_dot(before, seen, node, self.counters[node])
        assert dot[0] == node
        assert dot[1] > max(self.counters[node], before.context.get(node), seen.get(node))
        # A dot a refused write was given may be given again: nothing holds it.
        assert dot not in self.issued
        kept = [s for s in before.siblings if not s.seen_by(seen)]
        if read is None:
            assert kept == list(before.siblings)  # a blind write supersedes nothing
        if len(kept) >= MAX_SIBLINGS:
            with pytest.raises(TooManySiblings):
                dvv.update(before, seen, dot, value, timestamp_ms, max_siblings=MAX_SIBLINGS)
            return
        after = dvv.update(before, seen, dot, value, timestamp_ms, max_siblings=MAX_SIBLINGS)
        # It supersedes exactly the siblings the context covers, and adds its own.
        assert after.siblings == tuple(sorted([*kept, Sibling(dot, value, timestamp_ms)], key=lambda s: s.dot))
        assert after.context == before.context.merge(seen).merge(VectorClock.of({node: dot[1]}))
        self.states[node] = after
        self.counters[node] = dot[1]
        self.issued.add(dot)
        self.acked.append((Sibling(dot, value, timestamp_ms), seen))

    @rule(src=st.sampled_from(NODES), dst=st.sampled_from(NODES))
    def sync(self, src: str, dst: str) -> None:
        self.states[dst] = dvv.merge(self.states[dst], self.states[src])

    @rule(replicas=st.sets(st.sampled_from(NODES), min_size=1))
    def read(self, replicas: set[str]) -> None:
        self.reads.append(dvv.merge_all(self.states[n] for n in sorted(replicas)))

    @rule(node=st.sampled_from(NODES))
    def crash_losing_the_counter(self, node: str) -> None:
        # The key's state survives; a partition counter kept too late does not: the contexts must make up for it.
        self.counters[node] = 0

    @precondition(lambda self: len(self.reads) > 1)
    @rule(data=st.data())
    def merge_is_commutative_associative_idempotent(self, data: st.DataObject) -> None:
        pool = [*self.states.values(), *self.reads]
        a, b, c = (pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(3))
        assert dvv.merge(a, b) == dvv.merge(b, a)
        assert dvv.merge(dvv.merge(a, b), c) == dvv.merge(a, dvv.merge(b, c))
        assert dvv.merge(a, a) == a
        assert dvv.merge(a, EMPTY) == a

    @invariant()
    def an_acknowledged_value_is_kept_unless_a_write_that_saw_it_superseded_it(self) -> None:
        everything = dvv.merge_all(self.states.values())
        held = siblings_of(everything)
        for sibling, _ in self.acked:
            superseded = any(sibling.seen_by(seen) for _, seen in self.acked)
            assert ((sibling.dot, sibling.value, sibling.timestamp_ms) in held) != superseded
        assert len(held) <= len(NODES) * MAX_SIBLINGS
        assert all(dot in self.issued for dot, _, _ in held)

    @invariant()
    def states_round_trip_through_bytes(self) -> None:
        for state in self.states.values():
            data = dvv.encode(state)
            assert dvv.decode(data) == state
            assert dvv.encode(dvv.decode(data)) == data
            assert dvv.decode_context(dvv.encode_context(state.context)) == state.context


History.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestHistory = History.TestCase


# ------------------------------------------------------------ next_dot

clocks = st.dictionaries(st.sampled_from(NODES), st.integers(1, 1000)).map(VectorClock.of)


@given(own=st.integers(0, 1000), state_clock=clocks, seen=clocks, counter=st.integers(0, 1000))
def test_next_dot_is_above_the_partition_counter_the_state_and_the_context(
    own: int, state_clock: VectorClock, seen: VectorClock, counter: int
) -> None:
    state = Versions((), state_clock.merge(VectorClock.of({"n1": own})))
    node, n = dvv.next_dot(state, seen, "n1", counter)
    assert node == "n1"
    assert n == max(counter, state.context.get("n1"), seen.get("n1")) + 1


def test_next_dot_passes_a_client_context_from_before_a_crash_that_lost_the_counter() -> None:
    seen = VectorClock.of({"n1": 7})
    assert dvv.next_dot(None, seen, "n1", 0) == ("n1", 8)
    with pytest.raises(ValueError, match="not above"):
        dvv.update(None, seen, ("n1", 7), b"v", 0, max_siblings=3)


def test_too_many_siblings_is_refused_at_the_bound_and_a_covering_context_clears_them() -> None:
    state: Versions | None = None
    for i in range(1, 4):
        state = dvv.update(state, VectorClock(), ("n1", i), bytes([i]), i, max_siblings=3)
    assert state is not None and state.values == (b"\x01", b"\x02", b"\x03")
    with pytest.raises(TooManySiblings):
        dvv.update(state, VectorClock(), ("n1", 4), b"x", 4, max_siblings=3)
    resolved = dvv.update(state, state.context, ("n1", 4), b"x", 4, max_siblings=3)
    assert resolved.values == (b"x",)
    assert resolved.context == VectorClock.of({"n1": 4})


def test_last_writer_wins_keeps_the_largest_timestamp_then_dot_and_the_context() -> None:
    state = Versions(
        (Sibling(("a", 1), b"old", 5), Sibling(("b", 1), b"tie-low", 9), Sibling(("c", 1), b"tie-high", 9)),
        VectorClock.of({"a": 2, "b": 1, "c": 1}),
    )
    assert dvv.last_writer_wins(state) == Versions((Sibling(("c", 1), b"tie-high", 9),), state.context)


# ------------------------------------------------------------ bytes

node_ids = st.text(min_size=1, max_size=8)


def make_versions(siblings: list[Sibling], extra: VectorClock) -> Versions:
    """A valid state of ``siblings`` (one per dot): a context covering them, and perhaps more."""
    by_dot = {s.dot: s for s in siblings}
    covered: dict[str, int] = {}
    for node, counter in by_dot:
        covered[node] = max(covered.get(node, 0), counter)
    return Versions(tuple(by_dot[d] for d in sorted(by_dot)), VectorClock.of(covered).merge(extra))


versions = st.builds(
    make_versions,
    st.lists(
        st.builds(
            Sibling,
            st.tuples(node_ids, st.integers(1, INT64_MAX)),
            st.none() | st.binary(max_size=8),
            st.integers(0, INT64_MAX),
        ),
        max_size=5,
    ),
    st.dictionaries(node_ids, st.integers(1, INT64_MAX), max_size=4).map(VectorClock.of),
)


@given(versions)
def test_encode_decode_round_trips_exactly(state: Versions) -> None:
    data = dvv.encode(state)
    assert dvv.decode(data) == state
    assert dvv.encode(dvv.decode(data)) == data
    assert dvv.decode_context(dvv.encode_context(state.context)) == state.context


def test_the_empty_context_is_empty_bytes_or_its_encoding() -> None:
    assert dvv.decode_context(b"") == VectorClock()
    assert dvv.decode_context(dvv.encode_context(VectorClock())) == VectorClock()


def decodes_or_raises_value_error(data: bytes) -> None:
    """Each decoder answers a state or a ValueError, nothing else; and what decodes re-encodes to itself."""
    try:
        state = dvv.decode(data)
    except ValueError:
        pass
    else:
        assert dvv.decode(dvv.encode(state)) == state
    try:
        context = dvv.decode_context(data)
    except ValueError:
        pass
    else:
        assert dvv.decode_context(dvv.encode_context(context)) == context


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_value_error(data: bytes) -> None:
    decodes_or_raises_value_error(data)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=8)
    | st.sampled_from(["n1", "", "x" * 65, 0, 1, -1, INT64_MAX, INT64_MAX + 1])
)
garbage = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3) | st.integers(-5, 5), inner, max_size=3)
    ),
    max_leaves=30,
)
near_state = st.lists(
    st.one_of(
        st.tuples(scalars, scalars, scalars, scalars).map(list),
        st.tuples(
            st.sampled_from(["a", "b"]), st.integers(-1, 3), st.none() | st.binary(max_size=2), st.integers(-1, 3)
        ).map(list),
        garbage,
    ),
    max_size=4,
)
near_context = st.lists(
    st.tuples(st.sampled_from(["a", "b", ""]) | scalars, st.integers(-1, 3) | scalars).map(list) | garbage, max_size=4
)


@given(st.one_of(garbage, st.tuples(near_state, near_context).map(list), near_context))
def test_well_formed_msgpack_of_the_wrong_shape_raises_value_error(obj: object) -> None:
    decodes_or_raises_value_error(msgpack.packb(obj, use_bin_type=True))


@given(versions, st.data())
def test_a_truncated_or_corrupted_encoding_decodes_or_raises_value_error(state: Versions, data: st.DataObject) -> None:
    encoded = bytearray(dvv.encode(state))
    decodes_or_raises_value_error(bytes(encoded[: data.draw(st.integers(0, len(encoded)))]))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] = data.draw(st.integers(0, 255))
    decodes_or_raises_value_error(bytes(encoded))


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ([[["b", 1, b"v", 0], ["a", 1, b"v", 0]], [["a", 1], ["b", 1]]], "siblings out of order"),
        ([[["a", 1, b"v", 0], ["a", 1, b"w", 0]], [["a", 1]]], "one dot twice"),
        ([[["a", 2, b"v", 0]], [["a", 1]]], "a sibling the context does not cover"),
        ([[], [["b", 1], ["a", 1]]], "context out of order"),
        ([[], [["a", 1], ["a", 2]]], "a node twice in the context"),
        ([[["a", 1, "text", 0]], [["a", 1]]], "a str value"),
        ([[["a", True, b"v", 0]], [["a", 1]]], "a bool counter"),
        ([[["a", 1, b"v", -1]], [["a", 1]]], "a negative timestamp"),
        ([[], [["a", 1 << 63]]], "a counter past 64 bits signed"),
        ([[], [["a" * 65, 1]]], "a node id too long"),
        ([[], [[["a"] * (dvv.MAX_CONTEXT_NODES + 1)]]], "a context too big"),
        ([[[f"n{i:05}", 1, None, 0] for i in range(dvv.MAX_DECODED_SIBLINGS + 1)], []], "too many siblings"),
        ({"siblings": []}, "a map"),
    ],
)
def test_states_of_the_wrong_shape_are_refused(obj: object, why: str) -> None:
    with pytest.raises(ValueError, match="not an encoded key state"):
        dvv.decode(msgpack.packb(obj, use_bin_type=True))


def test_deeply_nested_and_oversized_headers_are_refused() -> None:
    for data in (b"\x91" * 100_000 + b"\xc0", b"\xdd\xff\xff\xff\xff", b"\xc7\x01\x05a"):
        with pytest.raises(ValueError):
            dvv.decode(data)
        with pytest.raises(ValueError):
            dvv.decode_context(data)
