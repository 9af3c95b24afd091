"""Leaderless quorum replication, Dynamo style: one partition's replica on one node (``mode = "leaderless"``).

Every replica of the partition's preference list (its N replicas) can coordinate a call; there is no leader.
A coordinator keeps each open call as one pending request, named by an id that starts at the replica's random
``incarnation`` and grows, so a reply to a request from a previous boot never counts for a new one. Timers
(``req:<id>``) bound every request; nothing waits forever.

- **Writes**: the coordinator dots the write (the partition's counter, kept in the log's hard state in the same
  step, so a dot never repeats across restarts), applies the key's ``ConflictPolicy``, stores it, and sends the
  state to the other preference replicas. With a sloppy quorum a suspected replica is stood in for by the next
  fallback, which receives the state with ``hint_for`` and hands it over later (the node's hint store). The
  answer waits for ``w`` acknowledgements, the coordinator's own first.
- **Reads** ask the preference list, answer with the policy's merge of the first ``r`` replies, and repair: once
  every asked replica replied (or the time ran out) the merged state goes to each one that differs, and here.
- **Linearizable** calls are ABD over strict majorities: read a majority and merge; a write dots itself above
  every counter it saw; the register's value is the sibling with the largest ``(counter, node)``. Phase two
  stores the result on a majority before the answer, so a later majority read meets it.
- **Tombstones** are purged by a sweep (bounded keys per tick, a cursor over the store) once older than the
  grace period, and only after every preference replica voted that it holds exactly the same tombstone, so a
  replica that missed the delete blocks the purge until repair brings it the tombstone.
- **Suspicion**: a peer that was unreachable or did not answer in time is avoided for ``suspect_ms``; any
  message from it clears that.

- **Anti-entropy** (``replication/anti_entropy.py``): the replica keeps a Merkle tree of its states (built from
  the store at boot, updated by every change, which goes through ``_put`` / ``_remove``) and, every
  ``anti_entropy_interval_ms``, compares it with the next preference replica in turn; the states exchanged are
  merged like any peer's.

Peer states are untrusted: one that does not decode, or that the key's policy refuses to merge, counts as no
reply and is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgpack

from replication import dvv
from replication.anti_entropy import ANTI_ENTROPY_MESSAGES, AntiEntropy
from replication.conflict import ConflictPolicy
from replication.dvv import Versions
from replication.leaderless_messages import (
    HandoffAck,
    HandoffRequest,
    KeyReadReply,
    KeyReadRequest,
    KeyWriteAck,
    KeyWriteRequest,
    PurgeCheck,
    PurgeKey,
    PurgeVote,
)
from replication.replica import (
    Answer,
    ClientCall,
    PartitionLog,
    PeerMessage,
    PeerUnreachable,
    Redirect,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    SendTo,
    StartTimer,
    StopTimer,
    TimerFired,
    VersionStore,
)
from replication.vclock import VectorClock

# How a read repairs the stale replicas it saw: "async" sends the merged state and answers at once; "sync"
# answers once every stale replica that replied has acknowledged it (or the request's time runs out).
REPAIR_MODES = ("async", "sync")


@dataclass(frozen=True, slots=True)
class KeyRead:
    """Read ``key``: the merged state of the first ``r`` replicas that answer. ``linearizable``: ABD, a read
    from a strict majority of the preference list, then the newest value written back to a majority, before
    the answer."""

    key: str
    r: int
    linearizable: bool = False
    repair: str = "async"


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """Write ``value`` (None: delete) of ``key`` by a client that read ``context`` (empty: a blind write, which
    adds a sibling; a blind delete deletes what the coordinator holds); answered once ``w`` replicas hold it
    durably. ``linearizable``: ABD over strict majorities,
    the newest value as the register's value."""

    key: str
    value: bytes | None
    context: VectorClock
    w: int
    linearizable: bool = False


@dataclass(frozen=True, slots=True)
class KeyValues:
    """A read's answer: the merged state (None: no replica that answered holds the key) and how many replied."""

    key: str
    state: Versions | None
    replies: int


@dataclass(frozen=True, slots=True)
class KeyStored:
    """A write's answer: the coordinator's state of the key after the write (its context is the one to send with
    the next write) and how many replicas acknowledged it, the coordinator included."""

    key: str
    state: Versions
    acks: int


@dataclass(frozen=True, slots=True)
class QuorumFailed:
    """A read or write that did not reach its quorum. ``definite``: it did not happen anywhere (refused before
    any replica stored it); else it may have reached some replicas (a write that timed out short of ``w``)."""

    reason: str  # "timeout" | "unavailable" | "refused" | "overloaded"
    definite: bool
    message: str


@dataclass(frozen=True, slots=True)
class LocalScan:
    """This replica's own live states in a key range, in key order; ``truncated``: more lie past the last."""

    items: tuple[tuple[str, Versions], ...]
    truncated: bool


@dataclass(frozen=True)
class LeaderlessSettings:
    replicas: int  # N: the length of a partition's preference list
    sloppy: bool = True  # False: strict quorums, never fallbacks
    request_timeout_ms: int = 2000
    suspect_ms: int = 1000  # how long an unreachable or unanswering peer is avoided
    sweep_interval_ms: int = 1000  # the tombstone sweep's period
    sweep_max_keys: int = 100  # keys one sweep tick looks at
    tombstone_grace_ms: int = 60_000
    max_pending_requests: int = 1024  # open coordinated requests; past it a call is refused ("overloaded")
    max_purges_in_flight: int = 16
    anti_entropy_interval_ms: int | None = 10_000  # None: no anti-entropy rounds (this replica still answers)


@dataclass
class LeaderlessStats:
    """What every leaderless replica of a node did since it started (the node's ``/metrics``)."""

    read_repairs: int = 0  # merged states sent to (or stored at) replicas a read found stale
    ae_rounds: int = 0  # anti-entropy rounds finished here, started by this node or a peer
    ae_keys_repaired: int = 0  # keys an anti-entropy round changed here
    ae_bytes_sent: int = 0
    ae_bytes_received: int = 0


# The hard state's layout version: msgpack [HARD_STATE_VERSION, partition dot counter].
HARD_STATE_VERSION = 1
# Keys read per store call while scanning.
_SCAN_CHUNK = 256
_SWEEP_TIMER = "sweep"
_AE_TIMER = "ae"
_AE_DEADLINE_TIMER = "ae-deadline"
_REQUEST_TIMER = "req:"
_PURGE_TIMER = "purge:"


@dataclass
class _Write:
    """A sloppy-quorum write: sent to ``targets`` (node -> the replica it stands in for, "" for itself)."""

    token: int
    key: str
    state: Versions
    w: int
    targets: dict[str, str]
    acked: set[str] = field(default_factory=set)
    answered: bool = False
    # Set once its timer fired and the replicas that never answered were handed to fallbacks (with hints).
    rerouted: bool = False


@dataclass
class _Read:
    """A quorum read; ``repairing`` is None until the repair starts, then the replicas whose ack it awaits."""

    token: int
    key: str
    r: int
    sync_repair: bool
    asked: frozenset[str]
    replies: dict[str, Versions | None]
    answered: bool = False
    repairing: set[str] | None = None


@dataclass
class _Abd:
    """A linearizable read or write: phase one gathers ``quorum`` states, phase two stores ``stored`` on as many."""

    token: int
    key: str
    quorum: int
    asked: frozenset[str]
    is_write: bool
    value: bytes | None
    replies: dict[str, Versions | None]
    stored: Versions | None = None
    result: KeyValues | KeyStored | None = None
    acked: set[str] = field(default_factory=set)


@dataclass
class _Purge:
    key: str
    context: VectorClock
    waiting: set[str]


_Request = _Write | _Read | _Abd


class LeaderlessReplica:
    """One partition's leaderless replica on one node (``PartitionReplica``)."""

    def __init__(
        self,
        partition: int,
        node_id: str,
        store: VersionStore,
        log: PartitionLog,
        settings: LeaderlessSettings,
        policy_for: Callable[[str], ConflictPolicy],
        incarnation: int,
        stats: LeaderlessStats | None = None,
    ) -> None:
        self.partition = partition
        self.node_id = node_id
        self._store = store
        self._log = log
        self._settings = settings
        self._policy_for = policy_for
        self._next_req = incarnation
        self._counter = _decode_hard_state(log.hard_state())
        self._preference: tuple[str, ...] = ()
        self._fallbacks: tuple[str, ...] = ()
        self._suspected_until_ms: dict[str, int] = {}
        self._requests: dict[int, _Request] = {}
        self._purges: dict[int, _Purge] = {}
        self._sweep_cursor = ""
        self.stats = stats if stats is not None else LeaderlessStats()
        self._ae = AntiEntropy() if settings.anti_entropy_interval_ms is not None else None
        self._ae_turn = 0

    # ------------------------------------------------------------ the node's side

    def set_placement(self, preference: tuple[str, ...], fallbacks: tuple[str, ...]) -> None:
        self._preference = preference
        self._fallbacks = tuple(f for f in fallbacks if f not in preference)

    @property
    def partition_counter(self) -> int:
        """The highest dot counter this replica gave a write of the partition."""
        return self._counter

    def pending_requests(self) -> int:
        return len(self._requests)

    def step(self, now_ms: int, inp: ReplicaInput) -> list[ReplicaEffect]:
        out: list[ReplicaEffect] = []
        if isinstance(inp, ClientCall):
            self._on_call(now_ms, inp, out)
        elif isinstance(inp, PeerMessage):
            self._on_peer(now_ms, inp.src, inp.body, out)
        elif isinstance(inp, PeerUnreachable):
            self._on_unreachable(now_ms, inp.dst, inp.body, out)
        elif isinstance(inp, TimerFired):
            self._on_timer(now_ms, inp.key, out)
        elif isinstance(inp, ReplicaStarted):
            self._counter = _decode_hard_state(inp.recovered.hard_state)
            out.append(StartTimer(_SWEEP_TIMER, now_ms + self._settings.sweep_interval_ms))
            if self._ae is not None and self._settings.anti_entropy_interval_ms is not None:
                self._load_tree(self._ae)
                out.append(StartTimer(_AE_TIMER, now_ms + self._settings.anti_entropy_interval_ms))
        # Synced and SnapshotInstalled mean nothing here: durability rides on the effects' marks.
        return out

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> LocalScan:
        items: list[tuple[str, Versions]] = []
        cursor = start
        while True:
            keys = self._store.keys_from(cursor, _SCAN_CHUNK)
            for key in keys:
                if end is not None and key >= end:
                    return LocalScan(tuple(items), False)
                state = self._store.get(key)
                if state is None or state.deleted:
                    continue
                if len(items) >= limit:
                    return LocalScan(tuple(items), True)
                items.append((key, state))
            if len(keys) < _SCAN_CHUNK:
                return LocalScan(tuple(items), False)
            cursor = keys[-1] + "\0"

    # ------------------------------------------------------------ storage: every change passes here

    def _put(self, key: str, state: Versions, old: Versions | None) -> None:
        """Store ``state`` over ``old``, the state the caller read (the Merkle tree trades one for the other)."""
        if self._ae is not None:
            self._ae.record(key, None if old is None else dvv.encode(old), dvv.encode(state))
        self._store.put(key, state)

    def _remove(self, key: str) -> None:
        if self._ae is not None:
            old = self._store.get(key)
            self._ae.record(key, None if old is None else dvv.encode(old), None)
        self._store.remove(key)

    def _load_tree(self, ae: AntiEntropy) -> None:
        cursor = ""
        while True:
            keys = self._store.keys_from(cursor, _SCAN_CHUNK)
            for key in keys:
                state = self._store.get(key)
                if state is not None:
                    ae.record(key, None, dvv.encode(state))
            if len(keys) < _SCAN_CHUNK:
                return
            cursor = keys[-1] + "\0"

    def _merge_local(self, key: str, incoming: Versions) -> Versions:
        """Merge ``incoming`` into the local state by the key's policy; store only if that changes it. ValueError
        if the policy refuses ``incoming`` (a peer's state of another type, or not canonical)."""
        local = self._store.get(key)
        policy = self._policy_for(key)
        merged = policy.merge(incoming, incoming) if local is None else policy.merge(local, incoming)
        if merged != local:
            self._put(key, merged, local)
        return merged

    def _checked(self, key: str, data: bytes) -> Versions:
        """A peer's state of ``key``: decoded and accepted by the key's policy, else ValueError."""
        state = dvv.decode(data)
        self._policy_for(key).merge(state, state)
        return state

    def _take_dot(self, counter: int) -> None:
        # Written in the same step as the write it dots: one sync makes both durable.
        self._counter = counter
        self._log.set_hard_state(msgpack.packb([HARD_STATE_VERSION, counter]))

    # ------------------------------------------------------------ liveness

    def _suspected(self, node: str, now_ms: int) -> bool:
        until = self._suspected_until_ms.get(node)
        if until is None:
            return False
        if until <= now_ms:
            del self._suspected_until_ms[node]
            return False
        return True

    def _suspect(self, node: str, now_ms: int) -> None:
        if node != self.node_id:
            self._suspected_until_ms[node] = now_ms + self._settings.suspect_ms

    def _usable_preference(self, now_ms: int) -> tuple[list[str], list[str]]:
        """The other preference replicas split into (reachable, suspected)."""
        up: list[str] = []
        down: list[str] = []
        for node in self._preference:
            if node != self.node_id:
                (down if self._suspected(node, now_ms) else up).append(node)
        return up, down

    def _next_fallback(self, now_ms: int, used: set[str]) -> str | None:
        for node in self._fallbacks:
            if node != self.node_id and node not in used and not self._suspected(node, now_ms):
                return node
        return None

    # ------------------------------------------------------------ client calls

    def _on_call(self, now_ms: int, call: ClientCall, out: list[ReplicaEffect]) -> None:
        op = call.op
        if not isinstance(op, KeyRead | KeyWrite):
            out.append(Answer(call.token, QuorumFailed("refused", True, f"not a leaderless op: {type(op).__name__}")))
            return
        if self.node_id not in self._preference:
            leader = self._preference[0] if self._preference else None
            out.append(Answer(call.token, Redirect("not_leader", leader=leader)))
            return
        if len(self._requests) >= self._settings.max_pending_requests:
            message = f"{len(self._requests)} requests are open on this replica"
            out.append(Answer(call.token, QuorumFailed("overloaded", True, message)))
            return
        asked_for = op.r if isinstance(op, KeyRead) else op.w
        if not 1 <= asked_for <= self._settings.replicas:
            message = f"a quorum must be 1 to {self._settings.replicas}, not {asked_for}"
            out.append(Answer(call.token, QuorumFailed("refused", True, message)))
            return
        if isinstance(op, KeyRead) and op.repair not in REPAIR_MODES:
            out.append(Answer(call.token, QuorumFailed("refused", True, f"repair must be one of {REPAIR_MODES}")))
            return
        if op.linearizable:
            self._start_abd(now_ms, call.token, op, asked_for, out)
        elif isinstance(op, KeyWrite):
            self._start_write(now_ms, call.token, op, out)
        else:
            self._start_read(now_ms, call.token, op, out)

    def _new_request(self, now_ms: int, request: _Request, out: list[ReplicaEffect]) -> int:
        req = self._next_req
        self._next_req += 1
        self._requests[req] = request
        out.append(StartTimer(f"{_REQUEST_TIMER}{req}", now_ms + self._settings.request_timeout_ms))
        return req

    def _finish(self, req: int, out: list[ReplicaEffect]) -> None:
        del self._requests[req]
        out.append(StopTimer(f"{_REQUEST_TIMER}{req}"))

    # ---- writes

    def _start_write(self, now_ms: int, token: int, op: KeyWrite, out: list[ReplicaEffect]) -> None:
        up, down = self._usable_preference(now_ms)
        targets = dict.fromkeys(up, "")
        if self._settings.sloppy:
            for missing in down:
                fallback = self._next_fallback(now_ms, set(targets))
                if fallback is not None:
                    targets[fallback] = missing
        if 1 + len(targets) < op.w:
            message = f"{1 + len(targets)} replicas reachable, w={op.w}"
            out.append(Answer(token, QuorumFailed("unavailable", True, message)))
            return
        policy = self._policy_for(op.key)
        local = self._store.get(op.key)
        seen = op.context
        if op.value is None and not seen.entries and local is not None:
            # A DELETE sent without a context deletes what its coordinator holds (a blind tombstone beside the
            # values would delete nothing a read shows); values it has not seen yet survive it as siblings.
            seen = local.context
        dot = dvv.next_dot(local, seen, self.node_id, self._counter)
        try:
            state = policy.write(local, seen, dot, op.value, now_ms)
        except ValueError as exc:
            out.append(Answer(token, QuorumFailed("refused", True, str(exc))))
            return
        self._take_dot(dot[1])
        self._put(op.key, state, local)
        if not targets:
            out.append(Answer(token, KeyStored(op.key, state, 1), durable=True))
            return
        write = _Write(token, op.key, state, op.w, targets)
        req = self._new_request(now_ms, write, out)
        encoded = dvv.encode(state)
        for node, hint_for in targets.items():
            # Durable: the peer will hold a dot; it must not leave before our counter that made it is on disk.
            out.append(SendTo(node, KeyWriteRequest(req, op.key, encoded, hint_for), durable=True))
        self._advance_write(req, write, out)

    def _advance_write(self, req: int, write: _Write, out: list[ReplicaEffect]) -> None:
        acks = 1 + len(write.acked)
        if not write.answered and acks >= write.w:
            write.answered = True
            out.append(Answer(write.token, KeyStored(write.key, write.state, acks), durable=True))
        # Kept open past the answer so that a replica found unreachable still gets a fallback (and a hint).
        if write.answered and write.acked >= write.targets.keys():
            self._finish(req, out)

    def _reroute_write(
        self, now_ms: int, req: int, write: _Write, dst: str, out: list[ReplicaEffect], refusal: str = ""
    ) -> None:
        stands_for = write.targets.pop(dst) or dst
        if self._settings.sloppy:
            fallback = self._next_fallback(now_ms, set(write.targets) | {dst})
            if fallback is not None:
                write.targets[fallback] = stands_for
                body = KeyWriteRequest(req, write.key, dvv.encode(write.state), stands_for)
                out.append(SendTo(fallback, body, durable=True))
        self._advance_write(req, write, out)
        if not write.answered and 1 + len(write.targets) < write.w:
            # No target is left that could still make w: say so now, with why, rather than at the timeout. The
            # coordinator stored the write, so it may stand: not definite.
            write.answered = True
            why = f"{dst} refused it ({refusal})" if refusal else f"{dst} is unreachable"
            message = f"{1 + len(write.acked)} of w={write.w} replicas hold the write and no other can take it: {why}"
            out.append(Answer(write.token, QuorumFailed("timeout", False, message)))

    # ---- reads

    def _start_read(self, now_ms: int, token: int, op: KeyRead, out: list[ReplicaEffect]) -> None:
        up, _ = self._usable_preference(now_ms)
        if 1 + len(up) < op.r:
            out.append(Answer(token, QuorumFailed("unavailable", True, f"{1 + len(up)} replicas reachable, r={op.r}")))
            return
        replies: dict[str, Versions | None] = {self.node_id: self._store.get(op.key)}
        read = _Read(token, op.key, op.r, op.repair == "sync", frozenset(up), replies)
        if not up:
            self._answer_read(read, out)
            return
        req = self._new_request(now_ms, read, out)
        out.extend(SendTo(node, KeyReadRequest(req, op.key)) for node in up)
        self._advance_read(req, read, out)

    def _merged(self, key: str, replies: dict[str, Versions | None]) -> Versions | None:
        states = [s for s in replies.values() if s is not None]
        if not states:
            return None
        policy = self._policy_for(key)
        merged = states[0]
        for state in states[1:]:
            merged = policy.merge(merged, state)
        return merged

    def _answer_read(self, read: _Read, out: list[ReplicaEffect]) -> None:
        read.answered = True
        try:
            result: object = KeyValues(read.key, self._merged(read.key, read.replies), len(read.replies))
        except ValueError as exc:
            # The replies do not merge (a join past the policy's bounds): a refusal, never a crash of the node.
            result = QuorumFailed("refused", True, f"the replicas' states of {read.key!r} do not merge: {exc}")
        out.append(Answer(read.token, result))

    def _advance_read(self, req: int, read: _Read, out: list[ReplicaEffect]) -> None:
        if not read.answered and not read.sync_repair and len(read.replies) >= read.r:
            self._answer_read(read, out)
        if read.repairing is None and len(read.replies) == 1 + len(read.asked):
            self._repair(req, read, out)
        if read.repairing is not None and not read.repairing:
            if not read.answered:
                self._answer_read(read, out)
            self._finish(req, out)
        elif read.repairing is not None and not read.sync_repair:
            self._finish(req, out)  # async: the repairs' acks are not awaited

    def _repair(self, req: int, read: _Read, out: list[ReplicaEffect]) -> None:
        read.repairing = set()
        try:
            merged = self._merged(read.key, read.replies)
        except ValueError:
            return  # nothing to repair with: the read was refused (``_answer_read``)
        if merged is None:
            return
        encoded = dvv.encode(merged)
        for node, state in read.replies.items():
            if node != self.node_id and state != merged:
                read.repairing.add(node)
                self.stats.read_repairs += 1
                out.append(SendTo(node, KeyWriteRequest(req, read.key, encoded)))
        if read.replies[self.node_id] != merged:
            self.stats.read_repairs += 1
            self._merge_local(read.key, merged)

    # ---- linearizable (ABD)

    def _start_abd(self, now_ms: int, token: int, op: KeyRead | KeyWrite, asked_for: int,
                   out: list[ReplicaEffect]) -> None:
        quorum = max(self._settings.replicas // 2 + 1, asked_for)
        up, _ = self._usable_preference(now_ms)
        if 1 + len(up) < quorum:
            message = f"{1 + len(up)} replicas reachable, a majority is {quorum}"
            out.append(Answer(token, QuorumFailed("unavailable", True, message)))
            return
        is_write = isinstance(op, KeyWrite)
        value = op.value if isinstance(op, KeyWrite) else None
        abd = _Abd(token, op.key, quorum, frozenset(up), is_write, value, {self.node_id: self._store.get(op.key)})
        req = self._new_request(now_ms, abd, out)
        out.extend(SendTo(node, KeyReadRequest(req, op.key)) for node in up)
        self._advance_abd(now_ms, req, abd, out)

    def _advance_abd(self, now_ms: int, req: int, abd: _Abd, out: list[ReplicaEffect]) -> None:
        if abd.result is None and len(abd.replies) >= abd.quorum:
            self._abd_phase_two(now_ms, req, abd, out)
            if req not in self._requests:
                return
        acks = 1 + len(abd.acked)
        if abd.result is not None and acks >= abd.quorum:
            result = abd.result
            if isinstance(result, KeyStored):
                result = KeyStored(result.key, result.state, acks)
            out.append(Answer(abd.token, result, durable=True))
            self._finish(req, out)

    def _abd_phase_two(self, now_ms: int, req: int, abd: _Abd, out: list[ReplicaEffect]) -> None:
        merged = self._merged(abd.key, abd.replies)
        if abd.is_write:
            seen = merged.context if merged is not None else VectorClock()
            # Above every counter the majority has seen, so this write orders after every completed one.
            counter = max(max((c for _, c in seen.entries), default=0), self._counter) + 1
            try:
                written = self._policy_for(abd.key).write(merged, seen, (self.node_id, counter), abd.value, now_ms)
            except ValueError as exc:
                out.append(Answer(abd.token, QuorumFailed("refused", True, str(exc))))
                self._finish(req, out)
                return
            self._take_dot(counter)
            stored = self._merge_local(abd.key, written)
            abd.stored = written
            abd.result = KeyStored(abd.key, stored, 0)
        elif merged is None:
            out.append(Answer(abd.token, KeyValues(abd.key, None, len(abd.replies))))
            self._finish(req, out)
            return
        else:
            self._merge_local(abd.key, merged)
            abd.stored = merged
            newest = max(merged.siblings, key=lambda s: (s.dot[1], s.dot[0]))
            abd.result = KeyValues(abd.key, Versions((newest,), merged.context), len(abd.replies))
            # A replica that replied with exactly this state holds it already: no write-back needed there.
            abd.acked = {n for n, s in abd.replies.items() if n != self.node_id and s == merged}
        if 1 + len(abd.acked) >= abd.quorum:
            return  # a majority holds it already: nothing to write back
        encoded = dvv.encode(abd.stored)
        for node in sorted(abd.asked - abd.acked):
            out.append(SendTo(node, KeyWriteRequest(req, abd.key, encoded), durable=True))

    # ------------------------------------------------------------ peers

    def _on_peer(self, now_ms: int, src: str, body: object, out: list[ReplicaEffect]) -> None:
        self._suspected_until_ms.pop(src, None)
        if isinstance(body, KeyReadRequest):
            if _fields_ok(body.req, body.key):
                state = self._store.get(body.key)
                out.append(SendTo(src, KeyReadReply(body.req, body.key, b"" if state is None else dvv.encode(state))))
        elif isinstance(body, KeyWriteRequest):
            if body.hint_for in ("", self.node_id) and _fields_ok(body.req, body.key, body.state):
                ok, reason = self._accept_state(body.key, body.state)
                out.append(SendTo(src, KeyWriteAck(body.req, body.key, ok, reason), durable=ok))
            # With another node's name in hint_for it is a hint: the node's hint store keeps it, not the replica.
        elif isinstance(body, HandoffRequest):
            if _fields_ok(body.hint, body.key, body.state) and self._accept_state(body.key, body.state)[0]:
                out.append(SendTo(src, HandoffAck(body.hint), durable=True))
        elif isinstance(body, KeyReadReply):
            if _fields_ok(body.req, body.key, body.state):
                self._on_read_reply(now_ms, src, body, out)
        elif isinstance(body, KeyWriteAck):
            if _fields_ok(body.req, body.key):
                self._on_write_ack(now_ms, src, body, out)
        elif isinstance(body, PurgeCheck):
            if _fields_ok(body.req, body.key, body.context):
                holds = self._holds_tombstone(body.key, body.context)
                # A yes lets the others drop the key: the tombstone (perhaps brought by anti-entropy, which syncs
                # nothing) must be on disk first, or a power loss here could bring back the value it deleted.
                out.append(SendTo(src, PurgeVote(body.req, body.key, holds), durable=holds))
        elif isinstance(body, PurgeVote):
            if _fields_ok(body.req, body.key):
                self._on_purge_vote(src, body, out)
        elif (isinstance(body, PurgeKey) and src in self._preference and _fields_ok(0, body.key, body.context)
              and self._holds_tombstone(body.key, body.context)):
            # Only a purge's coordinator, a preference replica, counted every vote: from anyone else it is not
            # a purge but a way to drop a tombstone a lagging replica still needs.
            self._remove(body.key)
        elif isinstance(body, ANTI_ENTROPY_MESSAGES) and self._ae is not None and {src, self.node_id} <= set(
            self._preference
        ):
            self._on_anti_entropy(now_ms, src, body, self._ae, out)

    # ---- anti-entropy

    def _start_anti_entropy(self, now_ms: int, ae: AntiEntropy, out: list[ReplicaEffect]) -> None:
        """A round with the next preference replica in turn that is not suspected (none if all are)."""
        peers = [n for n in self._preference if n != self.node_id and not self._suspected(n, now_ms)]
        if not peers or ae.running or self.node_id not in self._preference:
            return
        self._ae_turn += 1
        peer = peers[self._ae_turn % len(peers)]
        self._next_req += 1
        out.extend(SendTo(dst, msg) for dst, msg in ae.start(now_ms, peer, self._next_req))
        self._arm_ae_deadline(ae, out)

    def _on_anti_entropy(self, now_ms: int, src: str, body: object, ae: AntiEntropy, out: list[ReplicaEffect]) -> None:
        step = ae.on_message(now_ms, src, body, self._states_of)
        out.extend(SendTo(dst, msg) for dst, msg in step.sends)
        for key, data in step.merge:
            local = self._store.get(key)
            if self._accept_state(key, data)[0] and self._store.get(key) != local:
                self.stats.ae_keys_repaired += 1
        if step.finished is not None:
            self.stats.ae_rounds += 1
            self.stats.ae_bytes_sent += step.finished.bytes_sent
            self.stats.ae_bytes_received += step.finished.bytes_received
        self._arm_ae_deadline(ae, out)

    def _states_of(self, keys: Sequence[str]) -> dict[str, bytes]:
        states = {}
        for key in keys:
            state = self._store.get(key)
            if state is not None:
                states[key] = dvv.encode(state)
        return states

    def _arm_ae_deadline(self, ae: AntiEntropy, out: list[ReplicaEffect]) -> None:
        deadline = ae.next_deadline_ms()
        out.append(StopTimer(_AE_DEADLINE_TIMER) if deadline is None else StartTimer(_AE_DEADLINE_TIMER, deadline))

    def _accept_state(self, key: str, data: bytes) -> tuple[bool, str]:
        try:
            self._merge_local(key, dvv.decode(data))
        except ValueError as exc:
            return False, str(exc)
        return True, ""

    def _on_read_reply(self, now_ms: int, src: str, body: KeyReadReply, out: list[ReplicaEffect]) -> None:
        request = self._requests.get(body.req)
        if not isinstance(request, _Read | _Abd) or request.key != body.key:
            return
        if src not in request.asked or src in request.replies:
            return
        if isinstance(request, _Abd) and request.result is not None:
            return
        try:
            state = self._checked(body.key, body.state) if body.state else None
        except ValueError:
            return  # a state that does not decode, or that the policy refuses, counts as no reply
        request.replies[src] = state
        if isinstance(request, _Read):
            if request.repairing is None:
                self._advance_read(body.req, request, out)
        else:
            self._advance_abd(now_ms, body.req, request, out)

    def _on_write_ack(self, now_ms: int, src: str, body: KeyWriteAck, out: list[ReplicaEffect]) -> None:
        request = self._requests.get(body.req)
        if request is None or request.key != body.key:
            return
        if isinstance(request, _Write):
            if src not in request.targets or src in request.acked:
                return
            if body.ok:
                request.acked.add(src)
                self._advance_write(body.req, request, out)
            else:
                # E.g. a fallback's full hint store.
                reason = body.reason[:200] if isinstance(body.reason, str) and body.reason else "no reason given"
                self._reroute_write(now_ms, body.req, request, src, out, reason)
        elif isinstance(request, _Read):
            if body.ok and request.repairing and src in request.repairing:
                request.repairing.discard(src)
                self._advance_read(body.req, request, out)
        elif request.result is not None and body.ok and src in request.asked:
            request.acked.add(src)
            self._advance_abd(now_ms, body.req, request, out)

    def _on_unreachable(self, now_ms: int, dst: str, body: object, out: list[ReplicaEffect]) -> None:
        self._suspect(dst, now_ms)
        if not isinstance(body, PurgeCheck | KeyWriteRequest | KeyReadRequest) or type(body.req) is not int:
            return
        if isinstance(body, PurgeCheck):
            if self._purges.pop(body.req, None) is not None:
                out.append(StopTimer(f"{_PURGE_TIMER}{body.req}"))
            return
        request = self._requests.get(body.req)
        if isinstance(request, _Write) and dst in request.targets and dst not in request.acked:
            self._reroute_write(now_ms, body.req, request, dst, out)
        elif isinstance(request, _Read) and request.repairing is None and not request.answered:
            # A read cannot ask fallbacks (they hold hints, not the key): fail now if r is out of reach.
            reachable = len(request.replies) + len(request.asked - request.replies.keys() - {dst})
            if reachable < request.r:
                message = f"{reachable} replicas reachable, r={request.r}"
                out.append(Answer(request.token, QuorumFailed("unavailable", True, message)))
                self._finish(body.req, out)

    # ------------------------------------------------------------ timers

    def _on_timer(self, now_ms: int, key: str, out: list[ReplicaEffect]) -> None:
        if key == _SWEEP_TIMER:
            self._sweep(now_ms, out)
            out.append(StartTimer(_SWEEP_TIMER, now_ms + self._settings.sweep_interval_ms))
        elif key == _AE_TIMER and self._ae is not None and self._settings.anti_entropy_interval_ms is not None:
            self._start_anti_entropy(now_ms, self._ae, out)
            out.append(StartTimer(_AE_TIMER, now_ms + self._settings.anti_entropy_interval_ms))
        elif key == _AE_DEADLINE_TIMER and self._ae is not None:
            out.extend(SendTo(dst, msg) for dst, msg in self._ae.on_timer(now_ms))
            self._arm_ae_deadline(self._ae, out)
        elif key.startswith(_PURGE_TIMER):
            self._purges.pop(_timer_id(key, _PURGE_TIMER), None)
        elif key.startswith(_REQUEST_TIMER):
            req = _timer_id(key, _REQUEST_TIMER)
            request = self._requests.get(req)
            if request is not None:
                self._expire(now_ms, req, request, out)

    def _expire(self, now_ms: int, req: int, request: _Request, out: list[ReplicaEffect]) -> None:
        if isinstance(request, _Write):
            silent = sorted(request.targets.keys() - request.acked)
            for node in silent:
                self._suspect(node, now_ms)
            if not request.answered:
                request.answered = True
                message = f"{1 + len(request.acked)} of w={request.w} acks in time; it may be stored on some replicas"
                out.append(Answer(request.token, QuorumFailed("timeout", False, message)))
            if self._settings.sloppy and silent and not request.rerouted:
                # A replica whose messages are lost never refuses: only its silence tells, and the write must
                # still reach a fallback (as a hint), or the replica misses it until anti-entropy. The request
                # stays open one more timeout for the fallbacks' acks.
                request.rerouted = True
                for node in silent:
                    self._reroute_write(now_ms, req, request, node, out)
                if req in self._requests:
                    out.append(StartTimer(f"{_REQUEST_TIMER}{req}", now_ms + self._settings.request_timeout_ms))
                return
        elif isinstance(request, _Read):
            for node in request.asked - request.replies.keys():
                self._suspect(node, now_ms)
            if request.repairing is None and len(request.replies) >= request.r:
                self._repair(req, request, out)
            if not request.answered:
                if len(request.replies) >= request.r:
                    self._answer_read(request, out)
                else:
                    message = f"{len(request.replies)} of r={request.r} replies in time"
                    out.append(Answer(request.token, QuorumFailed("timeout", True, message)))
        else:
            for node in request.asked - request.replies.keys() - request.acked:
                self._suspect(node, now_ms)
            # Only an ABD write that reached phase two may have stored something; a read-back changes no value.
            definite = not (request.is_write and request.result is not None)
            message = f"no majority of {request.quorum} in time"
            out.append(Answer(request.token, QuorumFailed("timeout", definite, message)))
        self._finish(req, out)

    # ------------------------------------------------------------ tombstones

    def _sweep(self, now_ms: int, out: list[ReplicaEffect]) -> None:
        limit = self._settings.sweep_max_keys
        keys = self._store.keys_from(self._sweep_cursor, limit)
        self._sweep_cursor = keys[-1] + "\0" if len(keys) >= limit else ""
        coordinator = next((n for n in self._preference if not self._suspected(n, now_ms)), None)
        if coordinator != self.node_id:
            return
        purging = {p.key for p in self._purges.values()}
        for key in keys:
            if len(self._purges) >= self._settings.max_purges_in_flight:
                return
            state = self._store.get(key)
            if state is None or not state.deleted or key in purging:
                continue
            if state.newest_ms() + self._settings.tombstone_grace_ms > now_ms:
                continue
            self._start_purge(now_ms, key, state.context, out)

    def _start_purge(self, now_ms: int, key: str, context: VectorClock, out: list[ReplicaEffect]) -> None:
        others = {n for n in self._preference if n != self.node_id}
        if not others:
            self._remove(key)
            return
        req = self._next_req
        self._next_req += 1
        self._purges[req] = _Purge(key, context, others)
        encoded = dvv.encode_context(context)
        # Durable for the same reason as a yes vote: this replica's own tombstone is on disk before it asks.
        out.extend(SendTo(node, PurgeCheck(req, key, encoded), durable=True) for node in sorted(others))
        out.append(StartTimer(f"{_PURGE_TIMER}{req}", now_ms + self._settings.request_timeout_ms))

    def _on_purge_vote(self, src: str, vote: PurgeVote, out: list[ReplicaEffect]) -> None:
        purge = self._purges.get(vote.req)
        if purge is None or purge.key != vote.key or src not in purge.waiting:
            return
        if vote.holds is not True:
            del self._purges[vote.req]
            out.append(StopTimer(f"{_PURGE_TIMER}{vote.req}"))
            return
        purge.waiting.discard(src)
        if purge.waiting:
            return
        del self._purges[vote.req]
        out.append(StopTimer(f"{_PURGE_TIMER}{vote.req}"))
        encoded = dvv.encode_context(purge.context)
        others = sorted(n for n in self._preference if n != self.node_id)
        out.extend(SendTo(node, PurgeKey(purge.key, encoded)) for node in others)
        if self._holds_tombstone(purge.key, encoded):
            self._remove(purge.key)

    def _holds_tombstone(self, key: str, context: bytes) -> bool:
        try:
            expected = dvv.decode_context(context)
        except ValueError:
            return False
        state = self._store.get(key)
        return state is not None and state.deleted and state.context == expected


def _fields_ok(req: object, key: object, *data: object) -> bool:
    """A peer message's fields have the types they claim (a hostile peer's need not)."""
    return type(req) is int and isinstance(key, str) and all(isinstance(d, bytes) for d in data)


def _timer_id(key: str, prefix: str) -> int:
    try:
        return int(key[len(prefix):])
    except ValueError:
        return -1


def _decode_hard_state(raw: bytes | None) -> int:
    """The partition dot counter kept in the log's hard state (0 before the first write)."""
    if raw is None:
        return 0
    try:
        decoded = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"the leaderless hard state does not decode: {exc}") from exc
    if not (isinstance(decoded, list) and len(decoded) == 2 and decoded[0] == HARD_STATE_VERSION
            and type(decoded[1]) is int and decoded[1] >= 0):
        raise ValueError(f"the leaderless hard state is not [{HARD_STATE_VERSION}, counter]: {decoded!r}")
    return decoded[1]
