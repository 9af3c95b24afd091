"""A small world of RaftReplicas for tests: nodes on SimDisks, a network, per-node clocks, durable holding.

Each node has its own clock (as etcd-io/raft's nodes have their own ticks): ``tick-election`` moves only
that node's clock to its election timer. A ``SendTo`` or ``Answer`` marked durable is held until the node
syncs past what the step that made it wrote (``sync``), exactly as the node's drivers do; a crash
(``crash``: a power loss, so only synced state survives) loses what was held.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import kvstore.messages  # noqa: F401  (registers the raft messages with the codec)
from kvstore import codec
from kvstore.commands import DeleteCommand, PutCommand
from kvstore.messages import Deleted, Failure, Found, Written
from kvstore.state_machine import KvStateMachine
from kvstore.storage.simulated import SimDisk, SimStorage
from replication.raft import ELECTION_TIMER, ENTRY_CONF_CHANGE, HEARTBEAT_TIMER, LEADER, RaftReplica
from replication.raft_membership import Configuration, decode_change
from replication.raft_messages import (
    AppendEntries,
    AppendReply,
    Heartbeat,
    HeartbeatReply,
    RaftOutcomeUnknown,
    RaftRefused,
    RequestVote,
    TimeoutNow,
    TransferStarted,
    VoteReply,
)
from replication.replica import (
    Answer,
    ClientCall,
    PeerMessage,
    Recovered,
    Redirect,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    SendTo,
    StartTimer,
    StopTimer,
    Synced,
    TimerFired,
)

PARTITION = 0


class RecordingMachine(KvStateMachine):
    """The real state machine, reporting every command it applies (state machine safety is checked on it)."""

    def __init__(self, storage: SimStorage, on_apply: Callable[[int, object], None]) -> None:
        super().__init__(storage, PARTITION)
        self._on_apply = on_apply

    def apply(self, index: int, command: object) -> object:
        self._on_apply(index, command)
        return super().apply(index, command)


@dataclass
class SimNode:
    node_id: str
    disk: SimDisk
    storage: SimStorage
    replica: RaftReplica
    clock: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    # (lsn, effect): durable effects waiting for the sync of everything up to lsn.
    held: list[tuple[int, SendTo | Answer]] = field(default_factory=list)
    incarnation: int = 0


@dataclass
class Options:
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    pre_vote: bool = True
    check_quorum: bool = True
    election_timeout_ms: int = 1000
    heartbeat_interval_ms: int = 100
    max_inflight_appends: int = 4
    max_append_bytes: int = 1 << 20
    compact_threshold: int = 10_000
    sweep_interval_ms: int | None = None
    lease_drift_ms: int | None = None
    max_pending_proposals: int = 4096
    max_pending_reads: int = 4096
    # Show each answer's position (``Answer.position``) in the output.
    positions: bool = False


def describe_entry(data: bytes) -> str:
    if not data:
        return "noop"
    if data[0] == ENTRY_CONF_CHANGE:
        change = decode_change(data[1:])
        return f"conf {change.action} {change.node}"
    command = codec.decode(data[1:])
    if isinstance(command, PutCommand):
        return f"put {command.key} {command.value.decode(errors='replace')}"
    if isinstance(command, DeleteCommand):
        return f"del {command.key}"
    return type(command).__name__


def describe_body(body: object) -> str:
    if isinstance(body, RequestVote):
        kind = "PreVote" if body.pre_vote else "Vote"
        transfer = " transfer" if body.transfer else ""
        return f"{kind} term={body.term} last={body.last_index}/{body.last_term}{transfer}"
    if isinstance(body, VoteReply):
        kind = "PreVoteResp" if body.pre_vote else "VoteResp"
        return f"{kind} term={body.term} {'granted' if body.granted else 'rejected'}"
    if isinstance(body, AppendEntries):
        entries = ", ".join(f"{e.index}/{e.term} {describe_entry(e.data)}" for e in body.entries)
        return f"App term={body.term} prev={body.prev_index}/{body.prev_term} commit={body.commit} entries=[{entries}]"
    if isinstance(body, AppendReply):
        if body.success:
            return f"AppResp term={body.term} index={body.index}"
        return f"AppResp term={body.term} reject index={body.index} hint={body.hint_index}/{body.hint_term}"
    if isinstance(body, Heartbeat):
        return f"Heartbeat term={body.term} commit={body.commit} round={body.round}"
    if isinstance(body, HeartbeatReply):
        return f"HeartbeatResp term={body.term} round={body.round} last={body.last_index}"
    if isinstance(body, TimeoutNow):
        return f"TimeoutNow term={body.term}"
    return repr(body)


def describe_result(result: object) -> str:
    if isinstance(result, Written):
        return f"written {result.key}@{result.version}"
    if isinstance(result, Found):
        return f"found {result.key}={result.value.decode(errors='replace')}@{result.version}"
    if isinstance(result, Deleted):
        return f"deleted {result.key} existed={result.existed}"
    if isinstance(result, Failure):
        return f"failure {result.code}"
    if isinstance(result, Redirect):
        return f"redirect {result.reason} leader={result.leader}"
    if isinstance(result, RaftOutcomeUnknown):
        return f"outcome-unknown index={result.index} term={result.term}"
    if isinstance(result, RaftRefused):
        return f"refused {result.reason}"
    if isinstance(result, TransferStarted):
        return f"transfer-started {result.target}"
    if isinstance(result, Configuration):
        return f"config voters=({','.join(result.voters)}) learners=({','.join(result.learners)})@{result.index}"
    return repr(result)


class RaftEnv:
    def __init__(self, options: Options, seed: int = 0) -> None:
        self.options = options
        self.seed = seed
        self.nodes: dict[str, SimNode] = {}
        # (src, dst, body), in the order they were released to the network.
        self.network: list[tuple[str, str, object]] = []
        # Each node's group; two nodes in different groups cannot talk. Empty: no partition.
        self.groups: dict[str, int] = {}
        self.answers: dict[int, object] = {}
        self.positions: dict[int, int] = {}
        self.applied: dict[str, dict[int, object]] = {}
        self.applied_everywhere: dict[int, object] = {}
        self.next_token = 1
        self.out: list[str] = []
        # The configuration each node's replica is built with (a node added later starts as a learner).
        self.initial: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for node_id in (*options.voters, *options.learners):
            self.initial[node_id] = (options.voters, options.learners)
            self.nodes[node_id] = self._boot(node_id, SimDisk(), 0, 0)

    # ------------------------------------------------------------ nodes

    def add_node(self, node_id: str, voters: tuple[str, ...]) -> None:
        """A new node with an empty log, a learner of a group it believes has ``voters``, started now."""
        self.initial[node_id] = (voters, (node_id,))
        now = max((node.clock for node in self.nodes.values()), default=0)
        self.nodes[node_id] = self._boot(node_id, SimDisk(), 0, now)

    def _boot(self, node_id: str, disk: SimDisk, incarnation: int, clock: int) -> SimNode:
        storage = SimStorage(disk)
        applied = self.applied.setdefault(node_id, {})

        def on_apply(index: int, command: object) -> None:
            # State machine safety: the same index carries the same command in every life of every node.
            applied.setdefault(index, command)
            first = self.applied_everywhere.setdefault(index, command)
            assert first == command, f"{node_id} applied {command!r} at {index}, another node {first!r}"

        o = self.options
        voters, learners = self.initial[node_id]
        replica = RaftReplica(
            PARTITION,
            node_id,
            voters,
            RecordingMachine(storage, on_apply),
            storage.log(PARTITION),
            random.Random(f"{self.seed}/{node_id}/{incarnation}"),
            learners=learners,
            election_timeout_ms=o.election_timeout_ms,
            heartbeat_interval_ms=o.heartbeat_interval_ms,
            max_inflight_appends=o.max_inflight_appends,
            max_append_bytes=o.max_append_bytes,
            compact_threshold=o.compact_threshold,
            check_quorum=o.check_quorum,
            pre_vote=o.pre_vote,
            sweep_interval_ms=o.sweep_interval_ms,
            lease_drift_ms=o.lease_drift_ms,
            max_pending_proposals=o.max_pending_proposals,
            max_pending_reads=o.max_pending_reads,
        )
        # The node's clock goes on across the crash: the replica boots at the time it restarts.
        node = SimNode(node_id, disk, storage, replica, clock=clock, incarnation=incarnation)
        log = storage.log(PARTITION)
        recovered = Recovered(log.applied_index(), log.hard_state(), log.bounds())
        self.step(node, ReplicaStarted(recovered))
        return node

    def crash(self, node_id: str) -> None:
        """Power loss and restart: only what was synced survives; held messages and answers are lost."""
        old = self.nodes[node_id]
        old.disk.crash("power")
        self.out.append(f"{node_id} crashed")
        self.nodes[node_id] = self._boot(node_id, old.disk, old.incarnation + 1, old.clock)

    def step(self, node: SimNode, inp: ReplicaInput) -> None:
        self.apply_effects(node, lambda: node.replica.step(node.clock, inp))

    def apply_effects(self, node: SimNode, run: Callable[[], list[ReplicaEffect]]) -> None:
        replica = node.replica
        before = (replica.role, replica.term)
        effects = run()
        if (replica.role, replica.term) != before:
            self.out.append(f"{node.node_id} became {replica.role} at term {replica.term}")
        lsn = node.storage.written_lsn
        must_wait = node.storage.synced_lsn < lsn
        for effect in effects:
            if isinstance(effect, SendTo):
                mark = " [durable]" if effect.durable else ""
                self.out.append(f"{node.node_id}->{effect.dst} {describe_body(effect.body)}{mark}")
                if effect.durable and must_wait:
                    node.held.append((lsn, effect))
                else:
                    self.network.append((node.node_id, effect.dst, effect.body))
            elif isinstance(effect, Answer):
                line = f"{node.node_id} answered #{effect.token}: {describe_result(effect.result)}"
                if self.options.positions:
                    line += f" at {effect.position}" + (" [durable]" if effect.durable else "")
                self.out.append(line)
                if effect.durable and must_wait:
                    node.held.append((lsn, effect))
                else:
                    self.release(effect)
            elif isinstance(effect, StartTimer):
                node.timers[effect.key] = effect.at_ms
            elif isinstance(effect, StopTimer):
                node.timers.pop(effect.key, None)

    def release(self, answer: Answer) -> None:
        """The answer reaches its client."""
        self.answers[answer.token] = answer.result
        self.positions[answer.token] = answer.position

    def sync(self, node_id: str) -> None:
        node = self.nodes[node_id]
        job = node.storage.prepare_sync()
        if job is not None:
            job.run()
            node.storage.complete_sync(job)
        synced = node.storage.synced_lsn
        still: list[tuple[int, SendTo | Answer]] = []
        for lsn, effect in node.held:
            if lsn > synced:
                still.append((lsn, effect))
            elif isinstance(effect, SendTo):
                self.network.append((node_id, effect.dst, effect.body))
            else:
                self.release(effect)
        node.held = still
        self.step(node, Synced())

    def needs_sync(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        return bool(node.held) or node.storage.synced_lsn < node.storage.written_lsn

    # ------------------------------------------------------------ network

    def blocked(self, src: str, dst: str) -> bool:
        return bool(self.groups) and self.groups.get(src, -1) != self.groups.get(dst, -1)

    def deliver(self, dst: str | None = None) -> int:
        """Deliver every message in flight (to ``dst``, or to anyone) when the command starts."""
        taken = [m for m in self.network if dst is None or m[1] == dst]
        self.network = [m for m in self.network if not (dst is None or m[1] == dst)]
        for src, to, body in taken:
            if self.blocked(src, to):
                self.out.append(f"dropped {src}->{to} {describe_body(body)}")
                continue
            self.deliver_one(src, to, body)
        return len(taken)

    def deliver_one(self, src: str, dst: str, body: object) -> None:
        # Every message crosses the codec, as on the wire.
        self.step(self.nodes[dst], PeerMessage(src, codec.decode(codec.encode(body))))

    # ------------------------------------------------------------ clients and timers

    def call(
        self,
        node_id: str,
        op: object,
        replication: str = "sync",
        read: str = "read-index",
        max_staleness_ms: int | None = None,
        min_index: int = 0,
    ) -> int:
        token = self.next_token
        self.next_token += 1
        self.step(self.nodes[node_id], ClientCall(token, op, replication, read, max_staleness_ms, min_index))
        return token

    def fire(self, node_id: str, key: str) -> bool:
        node = self.nodes[node_id]
        at = node.timers.get(key)
        if at is None:
            return False
        node.clock = max(node.clock, at)
        del node.timers[key]
        self.step(node, TimerFired(key))
        return True

    def tick_election(self, node_id: str) -> None:
        # The timer re-arms itself while the deadline (moved by messages from a leader) lies ahead: fire
        # it until the node does something.
        for _ in range(8):
            lines = len(self.out)
            if not self.fire(node_id, ELECTION_TIMER) or len(self.out) > lines:
                return

    def tick_heartbeat(self, node_id: str) -> None:
        self.fire(node_id, HEARTBEAT_TIMER)

    def leaders(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.replica.role == LEADER]
