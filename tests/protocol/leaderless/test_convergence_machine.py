"""A Hypothesis state machine over the harness: sloppy-quorum writes (blind, or with the coordinator's context),
message drops, duplicates and reordering, partitions and heals. After a heal, hinted handoff and a full read
repair, every replica of the preference list holds the same state, and every acknowledged write is in it or was
superseded by a write whose context had seen it (a delete without one supersedes what its coordinator held)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from leaderless_env import Cluster

from replication.dvv import Dot
from replication.leaderless import KeyStored, KeyValues, LeaderlessSettings, QuorumFailed
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3", "n4", "n5")
PREFERENCE = NODES[:3]
KEYS = ("a", "b")


@dataclass
class Write:
    key: str
    dot: Dot
    seen: VectorClock
    coordinator: str
    token: int


class LeaderlessMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = Cluster(NODES, LeaderlessSettings(replicas=3, request_timeout_ms=500, suspect_ms=500))
        self.writes: list[Write] = []  # every write a coordinator stored (so it may be anywhere)
        self.serial = 0

    @rule(coordinator=st.sampled_from(PREFERENCE), key=st.sampled_from(KEYS), with_context=st.booleans(),
          delete=st.booleans(), w=st.integers(1, 3))
    def write(self, coordinator: str, key: str, with_context: bool, delete: bool, w: int) -> None:
        local = self.c.stores[coordinator].states.get(key)
        seen = local.context if with_context and local is not None else VectorClock()
        # A delete without a context supersedes what its coordinator holds, as one with that context would.
        superseding = local.context if delete and local is not None else seen
        self.serial += 1
        before = self.c.replicas[coordinator].partition_counter
        token = self.c.write(coordinator, key, None if delete else str(self.serial).encode(), w=w, context=seen)
        counter = self.c.replicas[coordinator].partition_counter
        if counter != before:
            self.writes.append(Write(key, (coordinator, counter), superseding, coordinator, token))
        else:
            assert isinstance(self.c.result(coordinator, token), QuorumFailed)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.c.inflight))
    def deliver(self, data: st.DataObject) -> None:
        self.c.deliver(data.draw(st.integers(0, len(self.c.inflight) - 1)))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.c.inflight))
    def drop(self, data: st.DataObject) -> None:
        self.c.drop(data.draw(st.integers(0, len(self.c.inflight) - 1)))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.c.inflight))
    def duplicate(self, data: st.DataObject) -> None:
        self.c.duplicate(data.draw(st.integers(0, len(self.c.inflight) - 1)))

    @rule(node=st.sampled_from(NODES))
    def isolate(self, node: str) -> None:
        self.c.cut |= {frozenset((node, other)) for other in NODES if other != node}

    @rule(ms=st.integers(1, 600))
    def advance(self, ms: int) -> None:
        self.c.advance(ms)

    @rule()
    def heal_and_repair(self) -> None:
        c = self.c
        c.cut.clear()
        c.deliver_all()
        c.advance(2_000)  # every request times out, every suspicion ends
        c.hand_off()
        c.deliver_all()
        for key in KEYS:
            token = c.read("n1", key, r=3, repair="sync")
            c.deliver_all()
            assert isinstance(c.result("n1", token), KeyValues)
        self.check_converged()

    def check_converged(self) -> None:
        for key in KEYS:
            states = {self.c.stores[node].states.get(key) for node in PREFERENCE}
            assert len(states) == 1, (key, states)
            (state,) = states
            dots = {s.dot for s in state.siblings} if state is not None else set()
            writes = [w for w in self.writes if w.key == key]
            assert dots <= {w.dot for w in writes}
            for write in writes:
                if not isinstance(self.c.result(write.coordinator, write.token), KeyStored):
                    continue
                superseded = any(other.seen.get(write.dot[0]) >= write.dot[1] for other in writes)
                assert write.dot in dots or superseded, (write, state)

    @invariant()
    def fallbacks_store_nothing(self) -> None:
        assert all(not self.c.stores[node].states for node in NODES[3:])

    def teardown(self) -> None:
        self.heal_and_repair()


TestLeaderlessMachine = LeaderlessMachine.TestCase
TestLeaderlessMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
