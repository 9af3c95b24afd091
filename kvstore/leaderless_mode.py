"""Leaderless mode in the node: the replicas it runs, what it asks them, and what their answers mean to a client.

The protocol is ``replication/leaderless.py`` (one ``LeaderlessReplica`` per partition this node holds a copy
of). This module is the node's side of it:

- the replica of a partition: its preference list is the partition's replicas in the map (the founders' layout
  puts ``replicas`` copies of each, spread by ``partitioning.rebalance``), its fallbacks every other active
  member, in ring order after the partition's first replica, so that the fallbacks of one partition differ
  from node to node as Dynamo's walk along the ring makes them;
- the conflict policy of each key (``[leaderless.policies]``, longest prefix first), one object per policy;
- hinted handoff (``replication/hinted_handoff.py``): a write this node takes as a fallback for an unreachable
  replica of a partition it does not hold is kept as a hint (``kvstore/hint_store.py``) and handed to that
  replica once it answers again, every ``handoff_interval_ms``; a hinted write it could never hand off (a
  partition that does not exist, a target that is no replica of it, or this node a replica itself) is refused;
- where an op of a partition it holds no replica of goes: the first replica, in preference order, that is not
  silent (a forward to it unanswered past the request timeout), since any replica coordinates;
- a client op as the call a replica takes (``KeyRead``/``KeyWrite``, quorums resolved against the cluster's
  ``[leaderless]`` defaults), and the replica's answer as the client's result: ``FoundSiblings`` (every live
  value and the context), ``Stored`` (the new context), or a ``Failure`` whose definiteness is the replica's.
"""

from __future__ import annotations

import random

from kvstore.config import ClusterConfig, resolve_quorum
from kvstore.effects import Effect, Send, SetTimer
from kvstore.errors import ErrorCode, KvError
from kvstore.hint_store import MetaHintStore
from kvstore.messages import (
    DeleteOp,
    Failure,
    FoundSiblings,
    GetOp,
    KeyOp,
    Message,
    PutOp,
    Result,
    ScanItem,
    ScanPage,
    Stored,
)
from kvstore.storage.base import Record, Storage
from kvstore.version_store import KvVersionStore
from partitioning.partition_map import PartitionMap
from replication.conflict import ConflictPolicy, LastWriterWins, Siblings
from replication.crdt import CRDT_TYPES, policy_named, render
from replication.dvv import Versions, decode, decode_context, encode, encode_context
from replication.event_time import EventTimePolicy
from replication.hinted_handoff import HandoffSend, HintedHandoff
from replication.leaderless import (
    KeyRead,
    KeyStored,
    KeyValues,
    KeyWrite,
    LeaderlessReplica,
    LeaderlessSettings,
    LeaderlessStats,
    LocalScan,
    QuorumFailed,
)
from replication.leaderless_messages import HandoffAck, HandoffRequest, KeyWriteAck, KeyWriteRequest
from replication.replica import ClientCall
from replication.vclock import VectorClock

HANDOFF_TIMER = "handoff"

# The HTTP header that carries a key's causal context (base64) to a client and back with its next write.
CONTEXT_HEADER = "X-Kv-Context"
# What a replica's failed quorum becomes for the client: a refusal by the key's policy (too many siblings) is a
# conflict to resolve by reading first; the rest ask for a retry.
_FAILURE_CODES = {
    "timeout": ErrorCode.TIMEOUT,
    "unavailable": ErrorCode.UNAVAILABLE,
    "overloaded": ErrorCode.OVERLOADED,
}


class LeaderlessMode:
    def __init__(self, node_id: str, config: ClusterConfig, storage: Storage, rng: random.Random) -> None:
        self._node_id = node_id
        self._storage = storage
        self._rng = rng
        self._replicas = config.replication_factor
        self._config = config.leaderless
        self.settings = LeaderlessSettings(
            replicas=self._replicas,
            sloppy=self._config.sloppy,
            request_timeout_ms=config.timeouts.request_timeout_ms,
            tombstone_grace_ms=self._config.tombstone_grace_ms,
            anti_entropy_interval_ms=self._config.anti_entropy_interval_ms if self._config.anti_entropy else None,
        )
        self.stats = LeaderlessStats()
        self._policies: dict[str, ConflictPolicy] = {
            "siblings": Siblings(self._config.max_siblings),
            "lww": LastWriterWins(),
            **{name: policy_named(name) for name in CRDT_TYPES},
            "event-time": EventTimePolicy(),
        }
        self.handoff = HintedHandoff(
            MetaHintStore(storage),
            self._merge_states,
            max_hints=self._config.max_hints,
            handoff_interval_ms=self._config.handoff_interval_ms,
            # A hint older than a tombstone's grace could bring a purged key back: it expires then.
            max_hint_age_ms=self._config.tombstone_grace_ms,
            incarnation=rng.randrange(1, 1 << 63),
        )
        # When the handoff timer fires next (None: not armed).
        self._timer_at_ms: int | None = None
        # Peers this node forwarded an op to and has heard nothing from since: when the first such forward left.
        # One entry per peer at most (bounded by the roster).
        self._awaiting_since_ms: dict[str, int] = {}

    def policy_for(self, key: str) -> ConflictPolicy:
        return self._policies[self._config.policy_name(key)]

    def _merge_states(self, _partition: int, key: str, old: bytes, new: bytes) -> bytes:
        return encode(self.policy_for(key).merge(decode(old), decode(new)))

    # ------------------------------------------------------------ hinted handoff (node-level: no replica here)

    def start(self, now_ms: int) -> list[Effect]:
        """At every boot: the hints kept on disk, and the handoff timer while any are held."""
        sends = self.handoff.start(now_ms)
        return self._sends(sends, now_ms) if self._config.hinted_handoff else []

    def tick(self, now_ms: int) -> list[Effect]:
        self._timer_at_ms = None
        return self._sends(self.handoff.tick(now_ms), now_ms)

    def on_message(self, now_ms: int, msg: Message, partition_map: PartitionMap) -> list[Effect] | None:
        """Handoff traffic a node answers itself (a hinted write for another replica, a handoff's ack); None for
        anything else. Any message from a node means it answers: its hints may go to it again at once."""
        self.handoff.reachable(msg.src)
        body = msg.body
        if isinstance(body, KeyWriteRequest) and body.hint_for and body.hint_for != self._node_id:
            if type(body.req) is not int or not isinstance(body.key, str) or not isinstance(body.hint_for, str):
                return []  # a hostile peer's: nothing to answer (the codec lets no such message in)
            refusal = self._hint_refusal(msg.partition, body.hint_for, partition_map)
            if refusal:
                ack = KeyWriteAck(body.req, body.key, ok=False, reason=refusal)
                return [Send(Message(self._node_id, msg.src, msg.partition, ack), False)]
            return self._sends(self.handoff.on_hinted_write(now_ms, msg.src, msg.partition, body), now_ms)
        if isinstance(body, HandoffAck):
            if type(body.hint) is int:
                self.handoff.on_ack(now_ms, msg.src, msg.partition, body)
            return []
        return None

    def _hint_refusal(self, partition: int, hint_for: str, partition_map: PartitionMap) -> str:
        """Why this node must not keep a hint of ``partition`` for ``hint_for`` ("" if it may): a hint for a
        partition that does not exist, or for a node that is no replica of it, would never be delivered and
        would hold a place in the bounded store for ever; a replica of the partition takes writes, not hints."""
        if not 0 <= partition < partition_map.partition_count:
            return f"no partition {partition}"
        replicas = partition_map.replicas[partition]
        if hint_for not in replicas:
            return f"{hint_for!r} holds no replica of partition {partition}"
        if self._node_id in replicas:
            return f"{self._node_id} is a replica of partition {partition}, not a fallback"
        return ""

    def on_send_failed(self, now_ms: int, msg: Message) -> bool:
        """Whether ``msg`` was a handoff (whose target then backs off)."""
        if isinstance(msg.body, HandoffRequest):
            self.handoff.on_unreachable(now_ms, msg.dst, msg.partition, msg.body)
            return True
        return False

    def _sends(self, sends: list[HandoffSend], now_ms: int) -> list[Effect]:
        """``sends`` as the node's effects, and the handoff timer armed for the next delivery due (a node that
        holds no hint has none)."""
        effects: list[Effect] = [Send(Message(self._node_id, s.dst, s.partition, s.body), s.durable) for s in sends]
        at_ms = self.handoff.next_tick_ms(now_ms) if self._config.hinted_handoff else None
        if at_ms is not None and (self._timer_at_ms is None or at_ms < self._timer_at_ms):
            self._timer_at_ms = at_ms
            effects.append(SetTimer(HANDOFF_TIMER, at_ms))
        return effects

    # ------------------------------------------------------------ routing the ops of partitions held elsewhere

    def route(self, replicas: tuple[str, ...], now_ms: int) -> str:
        """Which of a partition's ``replicas`` coordinates an op this node forwards: the first, in preference
        order, that is not silent. Any replica may coordinate, so one whose messages are lost (it never refuses,
        its forwards only time out) must not take every op of its partitions down with it."""
        for node in replicas:
            since = self._awaiting_since_ms.get(node)
            if since is None or now_ms - since < self.settings.request_timeout_ms:
                return node
        return replicas[0]  # all silent: the first, whose answer would clear it

    def forwarded_to(self, node: str, now_ms: int) -> None:
        self._awaiting_since_ms.setdefault(node, now_ms)

    def heard_from(self, node: str) -> None:
        self._awaiting_since_ms.pop(node, None)

    def unreachable(self, node: str, now_ms: int) -> None:
        """A forward to ``node`` could not be sent at all: silent at once."""
        self._awaiting_since_ms[node] = now_ms - self.settings.request_timeout_ms

    # ------------------------------------------------------------ replicas

    def build_replica(self, partition: int, partition_map: PartitionMap) -> LeaderlessReplica:
        replica = LeaderlessReplica(
            partition,
            self._node_id,
            KvVersionStore(self._storage, partition),
            self._storage.log(partition),
            self.settings,
            self.policy_for,
            # A child draw per replica, in partition order: the simulator stays deterministic.
            incarnation=self._rng.getrandbits(63),
            stats=self.stats,
        )
        self.place(replica, partition, partition_map)
        return replica

    def place(self, replica: LeaderlessReplica, partition: int, partition_map: PartitionMap) -> None:
        replica.set_placement(*placement(partition_map, partition))

    # ------------------------------------------------------------ ops and results

    def call(self, token: int, op: KeyOp) -> ClientCall:
        """The replica's call for a client op (the node checked the op with ``check_op`` already)."""
        if isinstance(op, GetOp):
            r = resolve_quorum(op.r or self._config.r, self._replicas)
            read = KeyRead(op.key, r, op.consistency == "linearizable", op.repair or "async")
            return ClientCall(token, read)
        assert isinstance(op, (PutOp, DeleteOp)), "check_op refuses CAS in leaderless mode"
        w = resolve_quorum(op.w or self._config.w, self._replicas)
        value = op.value if isinstance(op, PutOp) else None
        write = KeyWrite(op.key, value, decode_context(op.context), w, op.consistency == "linearizable")
        return ClientCall(token, write)

    def result(self, op: KeyOp, answer: object) -> Result:
        """The client's result for the replica's ``answer`` to ``op``."""
        if isinstance(answer, KeyValues):
            return self._found(op.key, answer.state)
        if isinstance(answer, KeyStored):
            return Stored(op.key, encode_context(answer.state.context), answer.acks)
        if isinstance(answer, QuorumFailed):
            code = _FAILURE_CODES.get(answer.reason, ErrorCode.PRECONDITION_FAILED)
            if code is ErrorCode.TIMEOUT and answer.definite:
                code = ErrorCode.UNAVAILABLE  # nothing was stored: say so (a definite error), and retry
            return Failure.of(code, answer.message)
        return Failure.of(ErrorCode.INTERNAL, f"unexpected answer {type(answer).__name__}")

    def scan_page(self, scan: LocalScan) -> ScanPage:
        """A replica's own live keys as a scan page: one item per key, its first live value as a read shows it (a
        CRDT's rendered JSON). A scan reads one replica per partition; a read of the key returns every sibling,
        from a quorum."""
        items = tuple(
            ScanItem(key, values[0], 0) for key, state in scan.items if (values := self._found(key, state).values)
        )
        return ScanPage(items, scan.truncated)

    def change_value(self, key: str, record: Record) -> bytes | None:
        """What the change feed shows of a stored key: its first live value as a read shows it (a CRDT's rendered
        JSON), None for a tombstone."""
        if record.value is None or self._config.policy_name(key) not in CRDT_TYPES:
            return record.value
        values = self._found(key, decode(record.context)).values
        return values[0] if values else None

    def _found(self, key: str, state: Versions | None) -> FoundSiblings:
        if state is None:
            return FoundSiblings(key, (), b"")
        context = encode_context(state.context)
        if self._config.policy_name(key) in CRDT_TYPES:
            # A CRDT key's value is its data type's state: a read returns it rendered as JSON.
            return FoundSiblings(key, (render(state),) if state.values else (), context)
        return FoundSiblings(key, state.values, context)

    def check(self, op: KeyOp) -> None:
        """KvError (a 400) for a write a CRDT key's policy refuses as an operation (malformed JSON, an unknown
        field, a value past its bounds), before any replica sees it; checked on an empty state."""
        if not isinstance(op, PutOp) or self._config.policy_name(op.key) not in CRDT_TYPES:
            return
        try:
            self.policy_for(op.key).write(None, VectorClock(), (self._node_id, 1), op.value, 0)
        except ValueError as exc:
            kind = self._config.policy_name(op.key)
            raise KvError(ErrorCode.BAD_REQUEST, f"key {op.key!r} is a {kind}: {exc}") from None


def placement(partition_map: PartitionMap, partition: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``partition``'s preference list (its replicas in the map) and its fallbacks: the other active members, in
    ring order (node ids sorted, wrapping) after its first replica."""
    preference = partition_map.replicas[partition]
    others = sorted(set(partition_map.active) - set(preference))
    first = preference[0]
    after = [n for n in others if n > first]
    return preference, (*after, *[n for n in others if n < first])

