"""A Hypothesis state machine over membership: joins, leaves, writes, reads, and a hostile hand-cranked network.

Five configured nodes, three founders (n4 and n5 join at run time), on the hand-cranked network of
tests/protocol/test_node_moves.py under fsync = "always" (every answer leaves only once synced, so a power
loss loses nothing acknowledged). Rules interleave membership orders, client writes and reads (left open:
their answers come when the network delivers them), delivering, dropping and duplicating messages, power
crashes and timers.

Checked on every step: no partition is served by two nodes (a move's source stops serving at its fence, before
the target installs), and reads never go back: a read sent after a write was acknowledged sees that write or a
later one, with the version the write was acknowledged with. At the end, once the network is healed and quiet:
every member has one map, balanced, and every acknowledged write is read back through every node.

Map updates are dropped and nodes lose power like any other message and any node: announcements that never
arrive are made up for by the nodes' anti-entropy rounds, so the maps converge once the network is quiet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvstore.config import StorageConfig, local_cluster
from kvstore.errors import ErrorCode
from kvstore.messages import ClientRequest, Failure, Found, GetOp, PutOp, SetMember, Written
from partitioning.partition_map import ACTIVE, LEAVING
from tests.protocol.test_node_moves import Net

FOUNDERS = ("n1", "n2", "n3")
NODES = ("n1", "n2", "n3", "n4", "n5")
PARTITIONS = 8
KEYS = tuple(f"key{i}" for i in range(6))
CONFIG = local_cluster(5, partitions=PARTITIONS, storage=StorageConfig(fsync="always"), initial_nodes=FOUNDERS)
# Failures that say nothing about the key: the op did not happen (definite), or may have (timeout).
EXPECTED_FAILURES = frozenset(
    code.value for code in (ErrorCode.WRONG_EPOCH, ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER, ErrorCode.TIMEOUT)
)


@dataclass
class Open:
    """A client request not answered yet."""

    node: str
    key: str
    value: bytes | None  # None: a read
    # For a read: the version of the key's latest write acknowledged before the read was sent.
    floor: int = 0


@dataclass
class Model:
    # Per key, the version of its latest acknowledged write (0: none yet).
    acked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    # Per value written (values are unique), the version it was acknowledged with.
    version_of: dict[bytes, int] = field(default_factory=dict)
    # Per key, its acknowledged value and version: what the final reads must find (or a later write).
    last: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    # Values whose write may have happened (timeout, crash of the node asked).
    uncertain: dict[str, set[bytes]] = field(default_factory=lambda: {k: set() for k in KEYS})


class MembershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net(cfg=CONFIG)
        self.model = Model()
        self.open: dict[int, Open] = {}
        self.next_value = 1

    @initialize(seed=st.integers(0, 2**32 - 1))
    def boot(self, seed: int) -> None:
        self.net = Net(cfg=CONFIG, rng=random.Random(seed))
        note(f"net seed={seed}")

    # ------------------------------------------------------------ helpers

    def send(self, node: str, op: GetOp | PutOp, entry: Open) -> None:
        request_id = self.net.next_request
        self.net.next_request += 1
        self.open[request_id] = entry
        self.net.step(node, ClientRequest(request_id, op))
        self.collect()

    def collect(self) -> None:
        """Judge every answer the network has produced."""
        for request_id, result in sorted(self.net.replies.items()):
            entry = self.open.pop(request_id)
            outcome = result.code if isinstance(result, Failure) else type(result).__name__
            event(f"{'put' if entry.value is not None else 'get'} -> {outcome}")
            if entry.value is None:
                self.check_read(entry, result)
            elif isinstance(result, Failure):
                assert result.code in EXPECTED_FAILURES, result
                if result.code == ErrorCode.TIMEOUT.value:
                    self.model.uncertain[entry.key].add(entry.value)
            else:
                assert isinstance(result, Written) and result.key == entry.key, result
                self.model.version_of[entry.value] = result.version
                if result.version > self.model.acked[entry.key]:
                    self.model.acked[entry.key] = result.version
                    self.model.last[entry.key] = (entry.value, result.version)
        self.net.replies.clear()

    def check_read(self, entry: Open, result: object) -> None:
        if isinstance(result, Found):
            assert result.key == entry.key
            assert result.version >= entry.floor, f"{entry.key}: read version {result.version} < acked {entry.floor}"
            known = self.model.version_of.get(result.value)
            assert known is None or known == result.version, f"{result} but that value was written as {known}"
        elif isinstance(result, Failure) and result.code in EXPECTED_FAILURES:
            pass
        else:
            assert isinstance(result, Failure) and result.code == ErrorCode.NOT_FOUND.value, result
            assert entry.floor == 0, f"{entry.key} not found after a write acknowledged at version {entry.floor}"

    # ------------------------------------------------------------ rules

    @rule(at=st.sampled_from(NODES), joiner=st.sampled_from(("n4", "n5", "n4", "n5", *FOUNDERS)))
    def join(self, at: str, joiner: str) -> None:
        self.net.step(at, SetMember(joiner, ACTIVE, CONFIG.address_text(joiner)))
        refusal = self.net.nodes[at].order_refusal
        event(f"join: {'done' if refusal is None else refusal.split(':')[0][:40]}")
        note(f"{self.net.now}: join {joiner} at {at}: {refusal}")

    @rule(at=st.sampled_from(NODES), leaver=st.sampled_from(NODES))
    def leave(self, at: str, leaver: str) -> None:
        self.net.step(at, SetMember(leaver, LEAVING))
        note(f"{self.net.now}: leave {leaver} at {at}: {self.net.nodes[at].order_refusal}")

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS))
    def write(self, node: str, key: str) -> None:
        value = b"v%d" % self.next_value
        self.next_value += 1
        self.send(node, PutOp(key, value), Open(node, key, value))

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS))
    def read(self, node: str, key: str) -> None:
        self.send(node, GetOp(key), Open(node, key, None, floor=self.model.acked[key]))

    @rule(count=st.integers(1, 20), pick=st.randoms(use_true_random=False))
    def deliver(self, count: int, pick: random.Random) -> None:
        for _ in range(count):
            if not self.net.queue:
                break
            self.net.now += 1
            msg = self.net.queue.pop(pick.randrange(len(self.net.queue)))
            self.net.step(msg.dst, msg)
        self.collect()

    @rule(pick=st.randoms(use_true_random=False))
    def drop(self, pick: random.Random) -> None:
        if self.net.queue:
            dropped = self.net.queue.pop(pick.randrange(len(self.net.queue)))
            note(f"{self.net.now}: dropped {type(dropped.body).__name__} {dropped.src}->{dropped.dst}")

    @rule(pick=st.randoms(use_true_random=False))
    def duplicate(self, pick: random.Random) -> None:
        if self.net.queue:
            self.net.queue.append(pick.choice(self.net.queue))

    @rule(node=st.sampled_from(NODES))
    def crash(self, node: str) -> None:
        note(f"{self.net.now}: power loss at {node}")
        # Its clients' requests are never answered now: their writes may or may not have happened.
        for request_id, entry in list(self.open.items()):
            if entry.node == node:
                del self.open[request_id]
                if entry.value is not None:
                    self.model.uncertain[entry.key].add(entry.value)
        self.net.crash(node)
        self.collect()

    @rule()
    def fire_timer(self) -> None:
        self.net.fire_next_timer()
        self.collect()

    # ------------------------------------------------------------ invariants

    @invariant()
    def no_partition_is_served_by_two_nodes(self) -> None:
        serving: dict[int, list[str]] = {}
        for node_id, node in self.net.nodes.items():
            for p in node.replicas:
                if not node._mover.fenced(p):
                    serving.setdefault(p, []).append(node_id)
        twice = {p: nodes for p, nodes in serving.items() if len(nodes) > 1}
        assert not twice, f"served by two nodes at once: {twice}"

    def teardown(self) -> None:
        net = self.net
        net.run(max_steps=100000)
        self.collect()
        assert not self.open, f"never answered: {self.open}"
        self.check_converged()
        # Every acknowledged write is read back through every node (a stale node learns the map by forwarding).
        for key, (value, version) in sorted(self.model.last.items()):
            later = self.model.uncertain[key]
            for node in NODES:
                answer = net.request(node, GetOp(key))
                if isinstance(answer, Failure) and answer.code == ErrorCode.WRONG_EPOCH.value:
                    net.run()
                    answer = net.request(node, GetOp(key))
                assert isinstance(answer, Found), (node, key, answer)
                assert (answer.value, answer.version) == (value, version) or (
                    answer.value in later and answer.version > version
                ), (node, key, answer, value, version)

    def check_converged(self) -> None:
        """Every member (by what all nodes know together) holds all of the map, and is balanced."""
        net = self.net
        known = net.nodes["n1"].partition_map
        for node in NODES:
            known = known.merge(net.nodes[node].partition_map)
        stale = {n: net.nodes[n].partition_map.epoch for n in known.members if net.nodes[n].partition_map != known}
        assert not stale, f"members whose map is behind the cluster's (epoch {known.epoch}): {stale}"
        assert all(net.nodes[n].balanced for n in known.members)


# Derandomized and database-less, as the other machines: CI runs the same examples every time.
MembershipMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMembershipMachine = MembershipMachine.TestCase
