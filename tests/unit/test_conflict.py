"""The laws of the conflict policies (replication/conflict.py), over generated histories of writes and merges.

A history runs one policy on three replicas of a key: coordinators keep a partition counter and dot their writes
with ``dvv.next_dot``, clients write blind or with the context of an earlier read, and replicas merge each
other's states by the policy. Whatever the policy, its merge must be a join (commutative, associative,
idempotent), or read repair, hinted handoff and anti-entropy would not converge.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication import dvv
from replication.conflict import ConflictPolicy, LastWriterWins, Siblings
from replication.dvv import EMPTY, Dot, Sibling, TooManySiblings, Versions
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3")
MAX_SIBLINGS = 3


@dataclass
class Run:
    replicas: dict[str, Versions] = field(default_factory=lambda: dict.fromkeys(NODES, EMPTY))
    reads: list[Versions] = field(default_factory=lambda: [EMPTY])
    acked: list[Sibling] = field(default_factory=list)

    def pool(self) -> list[Versions]:
        return [*self.replicas.values(), *self.reads]


@dataclass(frozen=True)
class Write:
    node: str
    value: bytes | None
    timestamp_ms: int
    read: int | None  # None: a blind write; else the context of that earlier read (modulo how many there are)


@dataclass(frozen=True)
class Sync:
    src: str
    dst: str


@dataclass(frozen=True)
class Read:
    nodes: tuple[str, ...]


Op = Write | Sync | Read

nodes = st.sampled_from(NODES)
histories = st.lists(
    st.one_of(
        # The coordinators' clocks disagree: timestamps need not follow causality.
        st.builds(Write, nodes, st.none() | st.binary(max_size=2), st.integers(0, 20), st.none() | st.integers(0, 50)),
        st.builds(Sync, nodes, nodes),
        st.builds(Read, st.sets(nodes, min_size=1).map(lambda chosen: tuple(sorted(chosen)))),
    ),
    max_size=30,
)


def run(policy: ConflictPolicy, ops: list[Op]) -> Run:
    history = Run()
    counters = dict.fromkeys(NODES, 0)
    for op in ops:
        if isinstance(op, Write):
            seen = VectorClock() if op.read is None else history.reads[op.read % len(history.reads)].context
            state = history.replicas[op.node]
            dot = dvv.next_dot(state, seen, op.node, counters[op.node])
            try:
                history.replicas[op.node] = policy.write(state, seen, dot, op.value, op.timestamp_ms)
            except TooManySiblings:
                continue
            counters[op.node] = dot[1]
            history.acked.append(Sibling(dot, op.value, op.timestamp_ms))
        elif isinstance(op, Sync):
            history.replicas[op.dst] = policy.merge(history.replicas[op.dst], history.replicas[op.src])
        else:
            merged = history.replicas[op.nodes[0]]
            for node in op.nodes[1:]:
                merged = policy.merge(merged, history.replicas[node])
            history.reads.append(merged)
    return history


@dataclass(frozen=True)
class PlainDvv:
    """dvv's own update and merge, to hold the siblings policy against."""

    name: str = "dvv"

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        return dvv.update(state, seen, dot, value, timestamp_ms, max_siblings=MAX_SIBLINGS)

    def merge(self, a: Versions, b: Versions) -> Versions:
        return dvv.merge(a, b)


POLICIES = [Siblings(MAX_SIBLINGS), LastWriterWins()]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@settings(max_examples=200, deadline=None)
@given(ops=histories, data=st.data())
def test_merge_is_commutative_associative_and_idempotent(
    policy: ConflictPolicy, ops: list[Op], data: st.DataObject
) -> None:
    pool = run(policy, ops).pool()
    a, b, c = (pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(3))
    assert policy.merge(a, b) == policy.merge(b, a)
    assert policy.merge(policy.merge(a, b), c) == policy.merge(a, policy.merge(b, c))
    assert policy.merge(a, a) == a


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@settings(max_examples=400, deadline=None)
@given(ops=histories)
def test_replicas_converge_whatever_order_their_states_are_merged_in(policy: ConflictPolicy, ops: list[Op]) -> None:
    states = list(run(policy, ops).replicas.values())
    results = set()
    for a, b, c in itertools.permutations(states):
        results.add(policy.merge(policy.merge(a, b), c))
        results.add(policy.merge(a, policy.merge(b, c)))
    assert len(results) == 1


@settings(max_examples=200, deadline=None)
@given(ops=histories)
def test_siblings_is_the_dotted_version_vector_and_loses_nothing_no_write_superseded(ops: list[Op]) -> None:
    history = run(Siblings(MAX_SIBLINGS), ops)
    assert history == run(PlainDvv(), ops)
    everything = dvv.merge_all(history.replicas.values())
    assert set(everything.siblings) <= set(history.acked)


@settings(max_examples=300, deadline=None)
@given(ops=histories)
def test_lww_holds_one_value_the_largest_timestamp_then_dot_of_the_writes(ops: list[Op]) -> None:
    policy = LastWriterWins()
    history = run(policy, ops)
    assert all(len(state.siblings) <= 1 for state in history.pool())
    everything = EMPTY
    for state in history.replicas.values():
        everything = policy.merge(everything, state)
    if history.acked:
        assert everything.siblings == (max(history.acked, key=lambda s: (s.timestamp_ms, s.dot)),)


def test_siblings_write_supersedes_what_the_context_covers_and_refuses_past_the_bound() -> None:
    policy = Siblings(max_siblings=2)
    one = policy.write(None, VectorClock(), ("n1", 1), b"one", 10)
    two = policy.write(one, VectorClock(), ("n1", 2), b"two", 11)
    assert two.values == (b"one", b"two")
    with pytest.raises(TooManySiblings):
        policy.write(two, VectorClock(), ("n1", 3), b"three", 12)
    resolved = policy.write(two, two.context, ("n1", 3), b"three", 12)
    assert resolved.siblings == (Sibling(("n1", 3), b"three", 12),)


def test_lww_keeps_the_newer_timestamp_whatever_the_order_of_arrival() -> None:
    policy = LastWriterWins()
    late = policy.write(None, VectorClock(), ("n1", 1), b"late", 20)
    early = policy.write(None, VectorClock(), ("n2", 1), b"early", 10)
    assert policy.merge(late, early).siblings == (Sibling(("n1", 1), b"late", 20),)
    assert policy.merge(early, late).siblings == (Sibling(("n1", 1), b"late", 20),)
    # A tie on the clock goes to the larger dot.
    tie = policy.write(None, VectorClock(), ("n3", 1), b"tie", 20)
    assert policy.merge(late, tie).values == (b"tie",)
    # Blind writes on one coordinator never pile up siblings.
    again = policy.write(late, VectorClock(), ("n1", 2), b"again", 5)
    assert again.values == (b"late",)


def test_lww_converges_when_a_write_that_saw_the_newest_value_has_an_older_timestamp() -> None:
    # The counterexample that dvv.merge followed by last_writer_wins failed: n2's write saw x (ts 10) but its
    # clock is behind (ts 5); z (ts 7) is concurrent with both. Merged (n1, n2) then n3 the state was z, merged
    # (n1, n3) then n2 it was y: n2's context dropped x, and x had already dropped z from the context's view.
    policy = LastWriterWins()
    x = policy.write(None, VectorClock(), ("n1", 1), b"x", 10)
    y = policy.write(x, x.context, ("n2", 1), b"y", 5)
    z = policy.write(None, VectorClock(), ("n3", 1), b"z", 7)
    first = policy.merge(policy.merge(x, y), z)
    second = policy.merge(policy.merge(x, z), y)
    assert first == second
    assert first.siblings == (Sibling(("n1", 1), b"x", 10),)
    assert first.context == VectorClock.of({"n1": 1, "n2": 1, "n3": 1})
