"""A Hypothesis state machine of a five-node leaderless cluster (N=3) of real ``Node``s on simulated disks:
writes (blind, or with the context of the client's last read; puts and deletes) and reads through any node,
crashes (process and power loss) and restarts, isolated nodes and heals, lost, duplicated and reordered
messages. After everything heals and a quiet time (anti-entropy and hinted handoff, no reads), every replica
of a key holds the same state, and every acknowledged value is in it or was seen by the read whose context a
later write (not refused) carried, or was written before a delete sent without a context (which supersedes what
its coordinator holds)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from kvstore.errors import ErrorCode
from kvstore.messages import DeleteOp, Failure, FoundSiblings, GetOp, PutOp, Stored
from tests.protocol.leaderless_node_net import LeaderlessNet, leaderless_config

NODES = ("n1", "n2", "n3", "n4", "n5")
QUIET_MS = 8_000  # several anti-entropy rounds per replica pair, and a handoff resend
MAX_DOWN = 2


@dataclass
class Read:
    values: tuple[bytes, ...]
    context: bytes


class LeaderlessNodeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        cfg = leaderless_config(nodes=5, request_timeout_ms=500, handoff_interval_ms=200,
                                anti_entropy_interval_ms=500)
        self.net = LeaderlessNet(cfg=cfg)
        # Two keys with different preference lists (so the fallbacks differ too).
        self.keys: list[str] = []
        for i in range(100):
            key = f"key{i}"
            if all(self.net.placement(key)[1] != self.net.placement(k)[1] for k in self.keys):
                self.keys.append(key)
            if len(self.keys) == 2:
                break
        self.serial = 0
        self.acked: dict[str, set[bytes]] = {k: set() for k in self.keys}
        self.written: dict[str, set[bytes]] = {k: set() for k in self.keys}
        # Values a write that may have happened superseded: those its context's read returned.
        self.superseded: dict[str, set[bytes]] = {k: set() for k in self.keys}
        self.last_read: dict[str, Read] = {}

    def up(self) -> list[str]:
        return [n for n in NODES if n not in self.net.down]

    @rule(data=st.data(), key_index=st.integers(0, 1), with_context=st.booleans(), delete=st.booleans(),
          w=st.sampled_from(["1", "quorum", "all"]))
    def write(self, data: st.DataObject, key_index: int, with_context: bool, delete: bool, w: str) -> None:
        node = data.draw(st.sampled_from(self.up()))
        key = self.keys[key_index]
        read = self.last_read.get(key) if with_context else None
        context = read.context if read is not None else b""
        self.serial += 1
        value = str(self.serial).encode()
        op = DeleteOp(key, w=w, context=context) if delete else PutOp(key, value, w=w, context=context)
        result = self.net.request(node, op)
        refused = isinstance(result, Failure) and ErrorCode(result.code).definite
        if not refused and read is not None:
            self.superseded[key] |= set(read.values)
        if not refused and delete and not context:
            # A delete without a context supersedes whatever its coordinator held: any value written before it.
            self.superseded[key] |= self.written[key]
        if not delete:
            self.written[key].add(value)
            if isinstance(result, Stored):
                self.acked[key].add(value)

    @rule(data=st.data(), key_index=st.integers(0, 1), r=st.sampled_from(["1", "quorum"]))
    def read(self, data: st.DataObject, key_index: int, r: str) -> None:
        node = data.draw(st.sampled_from(self.up()))
        key = self.keys[key_index]
        result = self.net.request(node, GetOp(key, r=r))
        if isinstance(result, FoundSiblings):
            assert set(result.values) <= self.written[key], result
            self.last_read[key] = Read(result.values, result.context)

    @precondition(lambda self: len(self.net.down) < MAX_DOWN)
    @rule(node=st.sampled_from(NODES), power=st.booleans())
    def crash(self, node: str, power: bool) -> None:
        if node not in self.net.down:
            self.net.stop(node, "power" if power else "process")

    @precondition(lambda self: bool(self.net.down))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self.net.restart(data.draw(st.sampled_from(sorted(self.net.down))))

    @rule(node=st.sampled_from(NODES))
    def isolate(self, node: str) -> None:
        self.net.isolate(node)

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(drop=st.sampled_from([0.0, 0.1, 0.3]), duplicate=st.sampled_from([0.0, 0.1]), reorder=st.booleans())
    def faults(self, drop: float, duplicate: float, reorder: bool) -> None:
        self.net.drop, self.net.duplicate, self.net.reorder = drop, duplicate, reorder

    @rule(ms=st.integers(1, 1500))
    def wait(self, ms: int) -> None:
        self.net.run_for(ms)

    def teardown(self) -> None:
        net = self.net
        net.drop = net.duplicate = 0.0
        net.heal()
        for node in sorted(net.down):
            net.restart(node)
        net.run_for(QUIET_MS)
        for key in self.keys:
            _, pref = net.placement(key)
            states = [net.state(n, key) for n in pref]
            assert all(s == states[0] for s in states), (key, states)
            present = set(states[0].values) if states[0] is not None else set()
            assert present <= self.written[key]
            lost = self.acked[key] - present - self.superseded[key]
            assert not lost, (key, lost, states[0])


TestLeaderlessNodeMachine = LeaderlessNodeMachine.TestCase
TestLeaderlessNodeMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
