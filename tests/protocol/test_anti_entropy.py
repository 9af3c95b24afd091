"""Anti-entropy rounds between replicas (replication/anti_entropy.py), over dict stores and a tiny network.

Each replica's store maps keys to opaque states; merging keeps the "larger" state (longer, then greater
bytes), a commutative, associative and idempotent merge like the real policies'. Every message goes through
the node's codec on the way, so the messages are what a real node could carry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvstore import codec
from replication import dvv
from replication.anti_entropy import ANTI_ENTROPY_MESSAGES, AeStep, AntiEntropy, RoundStats
from replication.anti_entropy_messages import AeAbort, AeDiff, AeDone, AeHashes, AeKeys, AeStart, AeStates
from replication.conflict import Siblings
from replication.vclock import VectorClock

for message_class in ANTI_ENTROPY_MESSAGES:
    if codec.registered(message_class.__name__) is None:
        codec.register(message_class)

SMALL = {"leaves": 64, "fanout": 4}


def larger(a: bytes | None, b: bytes) -> bytes:
    return b if a is None else max(a, b, key=lambda s: (len(s), s))


Merge = Callable[[bytes | None, bytes], bytes]


class Replica:
    def __init__(self, name: str, **options: int) -> None:
        self.name = name
        # How a state from the peer joins ours (the key's policy, for a real replica).
        self.merge: Merge = larger
        self.store: dict[str, bytes] = {}
        self.ae = AntiEntropy(**options)
        self.finished: list[RoundStats] = []

    def put(self, key: str, state: bytes) -> None:
        self.ae.record(key, self.store.get(key), state)
        self.store[key] = state

    def delete(self, key: str) -> None:
        if key in self.store:
            self.ae.record(key, self.store.pop(key), None)

    def states(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.store[k] for k in keys if k in self.store}

    def take(self, step: AeStep) -> None:
        for key, state in step.merge:
            merged = self.merge(self.store.get(key), state)
            if merged != self.store.get(key):
                self.put(key, merged)
        if step.finished is not None:
            self.finished.append(step.finished)


class Net:
    """Delivers messages in order; ``drop`` decides, per message number, which are lost."""

    def __init__(self, *replicas: Replica) -> None:
        self.replicas = {r.name: r for r in replicas}
        self.queue: deque[tuple[str, str, object]] = deque()
        self.log: list[tuple[str, str, object]] = []
        self.ignored = 0

    def post(self, src: str, sends: list[tuple[str, object]]) -> None:
        for dst, msg in sends:
            self.queue.append((src, dst, codec.decode(codec.encode(msg))))

    def run(self, now_ms: int = 0, drop: Callable[[int], bool] = lambda n: False, limit: int = 100_000) -> None:
        while self.queue:
            assert len(self.log) < limit, "the round does not end"
            src, dst, msg = self.queue.popleft()
            number = len(self.log)
            self.log.append((src, dst, msg))
            if not drop(number):
                self.deliver(now_ms, src, dst, msg)

    def deliver(self, now_ms: int, src: str, dst: str, msg: object) -> AeStep:
        replica = self.replicas[dst]
        step = replica.ae.on_message(now_ms, src, msg, replica.states)
        if not step.sends and not step.merge and step.finished is None:
            self.ignored += 1
        replica.take(step)
        self.post(dst, step.sends)
        return step

    def round(self, a: Replica, b: Replica, session: int = 7, now_ms: int = 0) -> None:
        self.post(a.name, a.ae.start(now_ms, b.name, session))
        self.run(now_ms)

    def kinds(self) -> list[str]:
        return [type(msg).__name__ for _, _, msg in self.log]


def pair(**options: int) -> tuple[Replica, Replica, Net]:
    a, b = Replica("a", **options), Replica("b", **options)
    return a, b, Net(a, b)


def state(key: str, version: int = 0, size: int = 20) -> bytes:
    return f"{key}/{version}/".encode().ljust(size, b".")


def test_equal_replicas_exchange_only_the_roots() -> None:
    a, b, net = pair()
    for i in range(300):
        a.put(f"k{i}", state(f"k{i}"))
        b.put(f"k{i}", state(f"k{i}"))
    net.round(a, b)
    assert net.kinds() == ["AeStart", "AeDone"]
    assert a.finished == [RoundStats("b", 0, 0, 0, 16, 0)]
    assert b.finished == [RoundStats("a", 0, 0, 0, 0, 16)]
    assert not a.ae.running and a.ae.next_deadline_ms() is None and b.ae.next_deadline_ms() is None


def test_differing_keys_converge_in_one_round_both_ways() -> None:
    a, b, net = pair()
    for i in range(500):
        a.put(f"k{i}", state(f"k{i}"))
        b.put(f"k{i}", state(f"k{i}"))
    for i in range(4):
        a.put(f"only-a{i}", state("a"))
        b.put(f"only-b{i}", state("b"))
        a.put(f"k{i}", state(f"k{i}", 1, 30))  # a's is longer: it wins
        b.put(f"k{100 + i}", state(f"k{100 + i}", 2, 30))  # b's wins
    a.delete("k200")  # a lost it: b's copy comes back
    expected = {**b.store, **a.store}
    expected.update({f"k{100 + i}": state(f"k{100 + i}", 2, 30) for i in range(4)})
    expected["k200"] = state("k200")
    net.round(a, b)
    assert a.store == b.store == expected
    assert a.ae.tree.root() == b.ae.tree.root()
    [a_stats], [b_stats] = a.finished, b.finished
    # a sends its 4 own keys and 8 changed ones; b its 4, the 8 changed and k200.
    assert (a_stats.keys_sent, a_stats.keys_received) == (12, 13)
    assert (b_stats.keys_sent, b_stats.keys_received) == (13, 12)
    assert a_stats.bytes_sent == b_stats.bytes_received and a_stats.bytes_received == b_stats.bytes_sent
    # A second round finds nothing left.
    net.log.clear()
    net.round(a, b, session=8)
    assert net.kinds() == ["AeStart", "AeDone"]


def test_ten_thousand_keys_three_differing_cost_under_five_percent_of_a_copy() -> None:
    a, b, net = pair()
    for i in range(10_000):
        a.put(f"user:{i}", state(f"user:{i}", 0, 100))
        b.put(f"user:{i}", state(f"user:{i}", 0, 100))
    a.put("user:17", state("user:17", 1, 101))
    b.put("user:4242", state("user:4242", 1, 101))
    b.put("user:new", state("user:new", 0, 100))
    net.round(a, b)
    assert a.store == b.store
    full_copy_bytes = sum(len(k) + len(s) for k, s in a.store.items())
    [stats] = a.finished
    exchanged = stats.bytes_sent + stats.bytes_received
    assert (full_copy_bytes, stats.leaves_differing, stats.keys_sent, stats.keys_received) == (1_089_000, 3, 2, 3)
    # Mostly the hashes of the walk (16 bytes and a 4-byte index each) and the three leaves' ~30 keys and digests.
    assert (stats.bytes_sent, stats.bytes_received) == (1735, 1389)
    assert exchanged / full_copy_bytes < 0.05  # 0.29%
    assert net.kinds() == [
        "AeStart",
        "AeHashes",
        "AeHashes",
        "AeHashes",
        "AeKeys",
        "AeDiff",
        "AeStates",
        "AeStates",
        "AeDone",
    ]


def test_small_messages_still_converge_and_respect_the_limits() -> None:
    a, b, net = pair(max_keys_per_message=3, max_bytes_per_message=100, **SMALL)
    for i in range(60):
        a.put(f"s{i}", state(f"s{i}"))
        b.put(f"s{i}", state(f"s{i}"))
    for i in range(120):
        a.put(f"a{i}", state(f"a{i}"))
    for i in range(200):
        b.put(f"b{i}", state(f"b{i}", 0, 10 + i % 7))
    for i in range(0, 60, 3):
        b.put(f"s{i}", state(f"s{i}", 1, 25))
    b.put("huge", b"x" * 500)  # larger than a message: it travels alone
    net.round(a, b)
    assert a.store == b.store
    assert len(a.store) == 60 + 120 + 200 + 1
    for _, _, msg in net.log[1:]:  # past AeStart, whose leaves is the tree's shape
        for name in ("items", "states", "want", "leaves"):
            assert len(getattr(msg, name, ())) <= 3
        carried = getattr(msg, "states", ())
        assert len(carried) == 1 or sum(len(k) + len(s) for k, s in carried) <= 100
    assert "AeDiff" in net.kinds() and "AeStates" in net.kinds()


def test_one_replica_empty_gets_everything_and_gives_nothing_wrong() -> None:
    a, b, net = pair(max_keys_per_message=16, **SMALL)
    for i in range(400):
        b.put(f"k{i}", state(f"k{i}"))
    net.round(a, b)
    assert a.store == b.store
    assert a.finished[0].keys_received == 400 and a.finished[0].keys_sent == 0
    # And from the other side: the full replica starts.
    c = Replica("c", max_keys_per_message=16, **SMALL)
    net.replicas["c"] = c
    net.round(b, c, session=9)
    assert c.store == b.store


def test_a_tree_of_one_leaf_walks_keys_at_once() -> None:
    a, b, net = pair(leaves=1, fanout=2, max_keys_per_message=4)
    for i in range(10):
        a.put(f"a{i}", state("a"))
        b.put(f"b{i}", state("b"))
    net.round(a, b)
    assert a.store == b.store and len(a.store) == 20
    assert net.kinds()[:2] == ["AeStart", "AeKeys"]  # the peer found the (only) leaf differing


def test_a_lost_message_abandons_the_round_after_the_timeout_and_a_new_round_works() -> None:
    reference_a, reference_b, reference = pair(max_keys_per_message=4, round_timeout_ms=1000, **SMALL)
    fill(reference_a, reference_b)
    reference.round(reference_a, reference_b)
    messages = len(reference.log)
    assert messages > 10
    for lost in range(messages):
        a, b, net = pair(max_keys_per_message=4, round_timeout_ms=1000, **SMALL)
        fill(a, b)
        net.post("a", a.ae.start(0, "b", 1))
        net.run(now_ms=0, drop=lost.__eq__)
        assert len(net.log) == lost + 1  # nothing moves after the lost message
        # a drives the key walk (it gets the leaf hashes), so only its last message, AeDone, ends its round.
        b_answering = b.ae.next_deadline_ms() is not None
        assert a.ae.running == (lost < messages - 1) and b_answering == (lost > 0) and b.finished == []
        assert a.ae.on_timer(999) == [] and b.ae.on_timer(999) == []
        if a.ae.running:
            assert a.ae.start(500, "b", 2) == []  # one round at a time
        open_rounds = a.ae.running + b_answering
        aborts = a.ae.on_timer(1000) + b.ae.on_timer(1000)
        assert [type(msg) for _, msg in aborts] == [AeAbort] * open_rounds
        for dst, msg in aborts:
            net.deliver(1000, "a" if dst == "b" else "b", dst, msg)
        assert not a.ae.running and a.ae.next_deadline_ms() is None and b.ae.next_deadline_ms() is None
        net.log.clear()
        net.round(a, b, session=2, now_ms=2000)
        assert a.store == b.store == reference_a.store


def fill(a: Replica, b: Replica) -> None:
    for i in range(30):
        a.put(f"a{i}", state("a"))
        b.put(f"b{i}", state("b"))
        a.put(f"c{i}", state("c"))
        b.put(f"c{i}", state("c", i % 2))


def test_duplicated_messages_are_ignored() -> None:
    a, b, net = pair(max_keys_per_message=4, **SMALL)
    fill(a, b)
    net.post("a", a.ae.start(0, "b", 3))
    while net.queue:
        src, dst, msg = net.queue.popleft()
        net.log.append((src, dst, msg))
        net.deliver(0, src, dst, msg)
        before = net.ignored
        net.deliver(0, src, dst, msg)
        assert net.ignored == before + 1
    assert a.store == b.store
    assert len(a.finished) == len(b.finished) == 1
    # A late duplicate of the start opens no round on b.
    late_start = net.log[0][2]
    assert b.ae.on_message(0, "a", late_start, b.states) == AeStep() and b.ae.next_deadline_ms() is None


def test_messages_of_unknown_rounds_and_from_other_peers_are_ignored() -> None:
    a, b, net = pair(**SMALL)
    fill(a, b)
    c = Replica("c", **SMALL)
    net.replicas["c"] = c
    [(_, start)] = a.ae.start(0, "b", 5)
    assert isinstance(start, AeStart)
    step = b.ae.on_message(0, "a", start, b.states)
    [(_, hashes)] = step.sends
    assert isinstance(hashes, AeHashes)
    assert a.ae.on_message(0, "c", hashes, c.states) == AeStep()  # right round, wrong peer
    assert a.ae.on_message(0, "b", replace(hashes, session=6), b.states) == AeStep()
    assert a.ae.on_message(0, "b", AeDone(5, 3), b.states) == AeStep()  # a step not expected
    assert a.ae.on_message(0, "b", "not a message", b.states) == AeStep()
    assert a.ae.on_message(0, "b", replace(start, leaves=65), b.states) == AeStep()  # another shape
    assert a.ae.running
    assert a.ae.on_message(0, "b", hashes, b.states).sends  # the real one still works


def test_malformed_fields_are_ignored_and_the_round_goes_on() -> None:
    a, b, net = pair(max_keys_per_message=4, **SMALL)
    fill(a, b)
    net.post("a", a.ae.start(0, "b", 11))
    mutants_tried = 0
    chunk_leaves: tuple[int, ...] = ()
    while net.queue:
        src, dst, msg = net.queue.popleft()
        net.log.append((src, dst, msg))
        if isinstance(msg, AeKeys):
            chunk_leaves = msg.leaves
        outside = next(f"x{i}" for i in range(1000) if a.ae.tree.leaf_of(f"x{i}") not in chunk_leaves)
        for mutant in mutants(msg, outside):
            replica = net.replicas[dst]
            assert replica.ae.on_message(0, src, mutant, replica.states) == AeStep(), mutant
            mutants_tried += 1
        net.deliver(0, src, dst, msg)
    assert a.store == b.store
    assert mutants_tried > 50


def mutants(msg: object, outside: str) -> list[object]:
    """Broken copies of a message: each must be refused whole. ``outside`` is a key of no leaf of the chunk."""
    found: list[object] = []
    if isinstance(msg, AeHashes):
        found += [
            broken(msg, level=msg.level + 1),
            broken(msg, level=msg.level - 1),
            broken(msg, indices=(*msg.indices[:-1], 10_000)),
            broken(msg, indices=tuple(reversed(msg.indices))) if len(msg.indices) > 1 else broken(msg, indices=()),
            broken(msg, hashes=msg.hashes[:-1]),
            broken(msg, hashes=(*msg.hashes[:-1], b"short")),
            broken(msg, level="1"),
        ]
    if isinstance(msg, AeKeys):
        found += [
            broken(msg, leaves=(*msg.leaves, 64)),
            broken(msg, leaves=()),
            broken(msg, leaves=tuple(range(5))),  # more than max_keys_per_message, and leaves never sent
            broken(msg, items=(*msg.items, (outside, b"d" * 16))),
            broken(msg, items=msg.items * 2) if msg.items else broken(msg, items=(("x", b"short"),)),
            broken(msg, items=tuple((k, d[:8]) for k, d in msg.items) or (("x", 5),)),
            broken(msg, key_from=None),
        ]
    if isinstance(msg, AeDiff):
        found += [
            broken(msg, want=(*msg.want, "never-offered")),
            broken(msg, want=msg.want * 2) if msg.want else broken(msg, want=("a", "b", "c", "d", "e")),
            broken(msg, states=(*msg.states, (outside, b"s"))),
            broken(msg, until=(-1, "")),
            broken(msg, until=("x", 1)),
            broken(msg, more=1),
        ]
    if isinstance(msg, AeStates):
        found += [
            broken(msg, states=(*msg.states, ("never-wanted", b"s"))),
            broken(msg, states=msg.states * 2) if msg.states else broken(msg, states=(("k", 1),)),
            broken(msg, more=None),
        ]
    if isinstance(msg, AeHashes | AeKeys | AeDiff | AeStates | AeDone):
        found += [broken(msg, step=msg.step + 2), broken(msg, step=None), broken(msg, session="7")]
    return found


def broken(msg: Any, **changes: object) -> object:
    """``msg`` with fields replaced by values of any type, as a hostile peer could send."""
    return replace(msg, **changes)


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.binary(max_size=20),
    st.just(b"\x00" * 16),
    st.tuples(st.integers(-1, 70), st.text(max_size=3)),
    st.lists(st.integers(-1, 70), max_size=6).map(tuple),
    st.lists(st.binary(max_size=17), max_size=6).map(tuple),
    st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=17)), max_size=6).map(tuple),
    st.lists(st.text(max_size=3), max_size=6).map(tuple),
)


@st.composite
def hostile_messages(draw: st.DrawFn) -> object:
    cls = draw(st.sampled_from(ANTI_ENTROPY_MESSAGES))
    values = {}
    for f in fields(cls):
        if f.name == "session":
            values[f.name] = draw(st.sampled_from([21, 22]) | junk)
        elif f.name == "step":
            values[f.name] = draw(st.integers(0, 12) | junk)
        else:
            values[f.name] = draw(junk)
    return cls(**values)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 40), st.lists(st.tuples(st.sampled_from("ab"), hostile_messages()), max_size=6))
def test_hostile_messages_never_raise(delivered: int, hostile: list[tuple[str, object]]) -> None:
    a, b, net = pair(max_keys_per_message=4, round_timeout_ms=1000, **SMALL)
    fill(a, b)
    net.post("a", a.ae.start(0, "b", 21))
    net.run(drop=lambda n: n >= delivered)  # part of a round, then it stalls
    for dst, msg in hostile:
        src = "b" if dst == "a" else "a"
        net.deliver(0, src, dst, msg)
    net.run()
    for replica in (a, b):
        net.post(replica.name, replica.ae.on_timer(10_000))
    net.run(now_ms=10_000)
    net.round(a, b, session=99, now_ms=20_000)
    assert a.store == b.store


class Replicas(RuleBasedStateMachine):
    """Writes and deletes on either side, rounds that complete and rounds that lose a message."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.net = pair(max_keys_per_message=3, round_timeout_ms=100, **SMALL)
        self.now_ms = 0
        self.session = 0
        self.synced = True

    def replica(self, name: str) -> Replica:
        return self.a if name == "a" else self.b

    @rule(side=st.sampled_from("ab"), key=st.sampled_from([f"k{i}" for i in range(40)]), size=st.integers(1, 30))
    def write(self, side: str, key: str, size: int) -> None:
        self.replica(side).put(key, state(key, size, size))
        self.synced = False

    @rule(side=st.sampled_from("ab"), key=st.sampled_from([f"k{i}" for i in range(40)]))
    def delete(self, side: str, key: str) -> None:
        self.replica(side).delete(key)
        self.synced = False

    @rule(initiator=st.sampled_from("ab"), lost=st.none() | st.integers(0, 30))
    def round(self, initiator: str, lost: int | None) -> None:
        first = self.replica(initiator)
        second = self.b if first is self.a else self.a
        self.session += 1
        self.net.log.clear()
        self.net.post(first.name, first.ae.start(self.now_ms, second.name, self.session))
        self.net.run(self.now_ms, drop=lambda n: n == lost)
        if not first.ae.running:
            self.synced = True
        self.now_ms += 100
        for replica in (self.a, self.b):
            self.net.post(replica.name, replica.ae.on_timer(self.now_ms))
        self.net.run(self.now_ms)

    @invariant()
    def converged_after_a_whole_round(self) -> None:
        if self.synced:
            assert self.a.store == self.b.store
            assert self.a.ae.tree.root() == self.b.ae.tree.root()

    @invariant()
    def no_round_outlives_its_timeout(self) -> None:
        assert self.a.ae.next_deadline_ms() is None and self.b.ae.next_deadline_ms() is None


Replicas.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestReplicas = Replicas.TestCase


def test_an_abort_ends_the_peers_side_of_the_round_at_once() -> None:
    a, b, _ = pair(round_timeout_ms=1000, **SMALL)
    fill(a, b)
    [(_, start)] = a.ae.start(0, "b", 31)
    b.ae.on_message(500, "a", start, b.states)  # b heard a later than a heard b
    [(_, abort)] = a.ae.on_timer(1000)
    assert abort == AeAbort(31, True)
    assert b.ae.on_message(1000, "c", abort, b.states) == AeStep() and b.ae.next_deadline_ms() == 1500
    assert b.ae.on_message(1000, "a", AeAbort(31, False), b.states) == AeStep()  # not a's own round
    assert b.ae.next_deadline_ms() == 1500
    b.ae.on_message(1000, "a", abort, b.states)
    assert b.ae.next_deadline_ms() is None
    # And the other way: the peer gives up the round it answers.
    [(_, start)] = a.ae.start(2000, "b", 32)
    b.ae.on_message(2000, "a", start, b.states)
    [(_, abort)] = b.ae.on_timer(3000)
    assert abort == AeAbort(32, False)
    a.ae.on_message(3000, "b", abort, a.states)
    assert not a.ae.running


def test_hashes_of_nodes_that_were_not_asked_for_are_ignored() -> None:
    a, b, _ = pair(**SMALL)
    a.put("x", state("x"))
    [(_, start)] = a.ae.start(0, "b", 41)
    [(_, level1)] = b.ae.on_message(0, "a", start, b.states).sends
    [(_, level2)] = a.ae.on_message(0, "b", level1, a.states).sends
    [(_, level3)] = b.ae.on_message(0, "a", level2, b.states).sends
    assert isinstance(level2, AeHashes) and isinstance(level3, AeHashes)
    # a sent the 4 children of the one differing level-1 node; b answers with the children of the differing one.
    assert len(level2.indices) == 4 and len(level3.indices) == 4
    asked = set(level2.indices)
    other = next(i for i in range(16) if i not in asked)  # a level-2 node that a never sent
    stranger = replace(level3, indices=tuple(range(other * 4, other * 4 + 4)))
    assert a.ae.on_message(0, "b", stranger, a.states) == AeStep()
    assert a.ae.on_message(0, "b", replace(level3, level=2), a.states) == AeStep()
    [(_, keys)] = a.ae.on_message(0, "b", level3, a.states).sends
    assert isinstance(keys, AeKeys) and keys.leaves == (a.ae.tree.leaf_of("x"),) and keys.items[0][0] == "x"


def test_a_key_removed_while_owed_is_skipped() -> None:
    a, b, net = pair(max_keys_per_message=3, max_bytes_per_message=30, leaves=1, fanout=2)
    for i in range(3):
        a.put(f"a{i}", state(f"a{i}"))
    # With one leaf, b finds it differing at once and walks its keys; a compares and owes b its three.
    net.post("a", a.ae.start(0, "b", 51))
    removed = False
    while net.queue:
        src, dst, msg = net.queue.popleft()
        net.log.append((src, dst, msg))
        net.deliver(0, src, dst, msg)
        if isinstance(msg, AeDiff) and not removed:
            assert msg.more and len(msg.states) == 1  # one 22-byte state fits a message, two owed still
            a.delete("a2")
            removed = True
    assert removed and a.store == b.store == {k: state(k) for k in ("a0", "a1")}
    assert a.finished[0].keys_sent == 2


def test_bad_options_are_refused() -> None:
    for options in ({"max_keys_per_message": 0}, {"max_bytes_per_message": 0}, {"round_timeout_ms": 0}):
        try:
            AntiEntropy(**options)
        except ValueError:
            continue
        raise AssertionError(f"{options} accepted")


def test_dvv_states_merged_with_the_siblings_policy_converge_to_equal_bytes() -> None:
    # What the leaderless replica will do: states are dvv.encode bytes, merged with the key's policy.
    policy = Siblings(max_siblings=8)

    def merge(held: bytes | None, data: bytes) -> bytes:
        theirs = dvv.decode(data)
        return dvv.encode(theirs if held is None else policy.merge(dvv.decode(held), theirs))

    a, b, net = pair(**SMALL)
    a.merge = b.merge = merge
    for i in range(50):
        written = dvv.encode(policy.write(None, VectorClock(), ("a", i + 1), b"v%d" % i, 1000))
        a.put(f"k{i}", written)
        b.put(f"k{i}", written)
    # Concurrent writes of k3 at both replicas, a write only a took, and a delete only b took.
    a.put("k3", dvv.encode(policy.write(None, VectorClock(), ("a", 100), b"from-a", 2000)))
    b.put("k3", dvv.encode(policy.write(None, VectorClock(), ("b", 1), b"from-b", 2000)))
    a.put("new", dvv.encode(policy.write(None, VectorClock(), ("a", 101), b"fresh", 2000)))
    seen = dvv.decode(b.store["k7"]).context
    b.put("k7", dvv.encode(policy.write(dvv.decode(b.store["k7"]), seen, ("b", 2), None, 2000)))
    net.round(a, b)
    assert a.store == b.store
    assert dvv.decode(a.store["k3"]).values == (b"from-a", b"from-b")  # both siblings kept
    assert dvv.decode(a.store["k7"]).values == ()  # the tombstone won: it saw the value
    assert dvv.decode(a.store["new"]).values == (b"fresh",)
    assert a.ae.tree.root() == b.ae.tree.root()
