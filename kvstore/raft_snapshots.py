"""Leader mode: snapshot transfer to a follower behind the leader's log compaction, both ends, for one node.

A Raft leader that compacted entries a follower still needs lists that follower in
``RaftReplica.followers_needing_snapshot()``. This module streams the partition's records to it with
``partitioning.stream`` (the primitive moves use; ``kvstore/handoff.py``'s readers, reused), and the follower's
end stages them and installs them in one step. ``RaftSnapshots`` holds every transition of both ends and returns
effects, as ``kvstore.handoff.Mover`` does; the node hands it its ``RaftSnapshotPart`` messages and its timer.

Leader side:

- A tick (timer ``raft-snapshots``, every ``TICK_MS`` in leader mode) starts a transfer for each follower its
  leading replicas list, one per follower at a time and at most ``max_outgoing`` per node; it drives the
  senders' retries (a lost chunk is resent, a follower that lost its state is streamed again from scratch, a
  sender out of retries fails and the next tick starts a new one) and drops the transfers of a replica that no
  longer leads the term it started them in. Every message carries that term.
- The cut. The snapshot is the state as of an entry, not as of a moment: the stream runs while the leader goes
  on applying, so it is made consistent by the stream's own delta passes rather than by stopping writes. The
  state machine the leader's replica applies with is watched (``WatchedMachine``): every command applied while
  a transfer runs reports its keys to the sender, and so does the reserved key ``""``, whose payload is
  ``SnapshotPoint(applied index, its term)`` read when the sender reads it. The stream sends the keys written
  behind its cursor again; once its snapshot pass is done and little is left, the node calls ``finish`` (there
  is no fence: writes go on) and the sender makes its last chunk only when nothing is dirty. At that moment no
  command was applied since ``""`` was last read, and every key's last copy sent is its current value: the
  follower's copy is exactly the state as of the point it holds. Writes after the last chunk need no report
  (``StreamSender.sealed``). Stopping writes, or copying the records at the start, would cost the partition's
  availability or a second copy of it in memory; replaying the log instead would need the entries the leader
  just compacted.
- ``Complete`` (the follower acknowledged the install): ``snapshot_sent(peer, index)``, and the replica goes
  on replicating from its log. A leader that compacted past that index meanwhile puts the follower back in the
  snapshot state, and the next tick sends a newer snapshot.

Follower side:

- A chunk is taken only while ``RaftReplica.snapshot_source(src, term)``: ``src`` leads the follower's current
  term. A chunk of another leader or term replaces the transfer being received; anything else is ignored.
- Chunks are staged in memory, not in the partition's records, so a crash can never leave a mix of the old
  copy and part of the new: the staged copy is simply lost, and the leader's sender, which finds the follower
  without a session, starts over. Staging in memory costs what the records cost every engine anyway (each one
  serves from memory), and is bounded per partition (``max_staged_bytes``: past it the transfer is dropped).
- On the last chunk, if ``snapshot_needed(index, term)`` (past the commit index, and not an entry the log holds
  already: a stale or duplicate snapshot changes nothing) the node replaces the partition's records with the
  staged ones and calls ``PartitionLog.install_snapshot`` in the same step, so one sync makes them durable
  together, then steps ``SnapshotInstalled``. The stream's ``StreamDone`` is durable: the leader counts the
  follower at the snapshot index only once the install is on disk.

Bounds: at most ``max_outgoing`` senders per node, each holding the stream's window; one staged copy per
partition, of at most ``max_staged_bytes``. The final phase ends once the keys written during one round trip
fit in one chunk, so a partition written faster than that (more than ``max_chunk_items`` keys per round trip)
keeps its transfer in the final phase until the load drops.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

from kvstore.commands import CasCommand, DeleteCommand, PurgeCommand, PutCommand
from kvstore.effects import Effect, Send, SetTimer
from kvstore.handoff import STATE_KEY, item_size, partition_readers
from kvstore.messages import Message, MovedRecord, RaftSnapshotPart, SnapshotPoint
from kvstore.state_machine import KvStateMachine
from kvstore.storage.base import Record, Storage, record_size
from partitioning.stream import (
    STREAM_MESSAGES,
    Complete,
    Failed,
    Installed,
    Item,
    Phase,
    SendMessage,
    StreamChunk,
    StreamReceiver,
    StreamSender,
)
from replication.raft import LEADER, RaftReplica
from replication.replica import PartitionReplica, ReplicaEffect, SnapshotInstalled

SNAPSHOT_TIMER = "raft-snapshots"
# How often a node looks for followers to send a snapshot to and drives its senders' retries.
TICK_MS = 200
# Transfers one node sends at a time.
MAX_OUTGOING_TRANSFERS = 2
# What one partition's staged copy may hold (``record_size`` of its records) before the transfer is dropped.
MAX_STAGED_BYTES = 1 << 30
# Records compared per storage read while the staged copy replaces a partition's.
_PAGE = 512


class WatchedMachine(KvStateMachine):
    """The leader's state machine: reports every command it applies, so a running transfer re-sends its keys."""

    def __init__(self, storage: Storage, partition: int, on_applied: Callable[[int, object], None]) -> None:
        super().__init__(storage, partition)
        self._on_applied = on_applied

    def apply(self, index: int, command: object) -> object:
        result = super().apply(index, command)
        self._on_applied(self._partition, command)
        return result


@dataclass(slots=True)
class _Outgoing:
    partition: int
    peer: str
    term: int
    # The snapshot point as of the sender's last read of STATE_KEY: the one the follower installs.
    point: SnapshotPoint = field(default_factory=lambda: SnapshotPoint(0, 0))
    sender: StreamSender = field(init=False)


@dataclass(slots=True)
class _Incoming:
    leader: str
    term: int
    receiver: StreamReceiver = field(init=False)
    staged: dict[str, Record] = field(default_factory=dict)
    staged_bytes: int = 0
    point: SnapshotPoint | None = None
    overflow: bool = False


class RaftSnapshots:
    """Both ends of snapshot transfers for one node: the ones its leaders send and the ones its followers take."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        rng: random.Random,
        *,
        replicas: Callable[[], Mapping[int, PartitionReplica]],
        clock: Callable[[], int],
        replica_clock: Callable[[], int],
        replica_effects: Callable[[int, list[ReplicaEffect]], None],
        emit: Callable[[list[Effect]], None],
        always_durable: bool,
        max_outgoing: int = MAX_OUTGOING_TRANSFERS,
        max_staged_bytes: int = MAX_STAGED_BYTES,
        stream_options: dict[str, int] | None = None,
    ) -> None:
        self._node_id = node_id
        self._storage = storage
        self._rng = rng
        self._replicas = replicas
        self._clock = clock
        self._replica_clock = replica_clock
        self._replica_effects = replica_effects
        self._emit = emit
        self._always_durable = always_durable
        self._max_outgoing = max_outgoing
        self._max_staged_bytes = max_staged_bytes
        self._stream_options = dict(stream_options or {})
        self._outgoing: dict[tuple[int, str], _Outgoing] = {}
        self._incoming: dict[int, _Incoming] = {}
        # Transfers that completed (the follower installed) since the node started (the simulator's stats).
        self.completed = 0

    @property
    def sending(self) -> list[tuple[int, str]]:
        """(partition, follower) of every transfer this node sends now, in order."""
        return sorted(self._outgoing)

    def machine(self, partition: int) -> WatchedMachine:
        return WatchedMachine(self._storage, partition, self._applied)

    # ------------------------------------------------------------ leader side

    def on_tick(self, now_ms: int) -> list[Effect]:
        effects: list[Effect] = []
        for key in sorted(self._outgoing):
            out = self._outgoing[key]
            replica = self._raft(out.partition)
            if replica is None or replica.role != LEADER or replica.term != out.term:
                del self._outgoing[key]  # no longer this term's leader: a new one sends its own snapshot
                continue
            effects.extend(self._sender_effects(now_ms, out, out.sender.tick(now_ms)))
        for partition in sorted(self._incoming):
            incoming = self._incoming[partition]
            replica = self._raft(partition)
            if replica is None or not replica.snapshot_source(incoming.leader, incoming.term):
                del self._incoming[partition]
        for partition in sorted(self._replicas()):
            leader = self._raft(partition)
            if leader is None or leader.role != LEADER:
                continue
            for peer in sorted(leader.followers_needing_snapshot()):
                if len(self._outgoing) >= self._max_outgoing:
                    break
                if (partition, peer) not in self._outgoing:
                    effects.extend(self._start(now_ms, partition, peer, leader))
        effects.append(SetTimer(SNAPSHOT_TIMER, now_ms + TICK_MS))
        return effects

    def _start(self, now_ms: int, partition: int, peer: str, replica: RaftReplica) -> list[Effect]:
        out = _Outgoing(partition, peer, replica.term)

        def state() -> SnapshotPoint:
            out.point = SnapshotPoint(*replica.snapshot_point())
            return out.point

        read_page, read_keys = partition_readers(self._storage, partition, state)
        # The stream id is the term: a later leader's transfer outranks an earlier one's at the follower.
        out.sender = StreamSender(
            replica.term,
            read_page=read_page,
            read_keys=read_keys,
            size_of=item_size,
            rng=self._rng,
            **self._stream_options,
        )
        self._outgoing[partition, peer] = out
        return self._sender_effects(now_ms, out, out.sender.start(now_ms))

    def _applied(self, partition: int, command: object) -> None:
        """A command was applied to ``partition`` here: every transfer of it re-sends the keys it wrote."""
        if not self._outgoing:
            return
        keys: Sequence[str]
        if isinstance(command, (PutCommand, DeleteCommand, CasCommand)):
            keys = (command.key,)
        elif isinstance(command, PurgeCommand):
            keys = command.keys
        else:
            keys = ()
        now_ms = self._clock()
        for out in [o for o in self._outgoing.values() if o.partition == partition]:
            sender = out.sender
            if sender.sealed:
                continue  # the copy is as of the point already read: later writes are the log's
            produced = sender.changed(now_ms, STATE_KEY)
            for key in keys:
                produced.extend(sender.changed(now_ms, key))
            self._emit(self._sender_effects(now_ms, out, produced))

    def _sender_effects(self, now_ms: int, out: _Outgoing, produced: Sequence[object]) -> list[Effect]:
        effects: list[Effect] = []
        for effect in produced:
            if isinstance(effect, SendMessage):
                effects.append(self._send(out.peer, out.partition, out.term, effect))
            elif isinstance(effect, Complete):
                del self._outgoing[out.partition, out.peer]
                self.completed += 1
                replica = self._raft(out.partition)
                if replica is not None and replica.role == LEADER and replica.term == out.term:
                    sent = replica.snapshot_sent(self._replica_clock(), out.peer, out.point.index)
                    self._replica_effects(out.partition, sent)
                return effects
            elif isinstance(effect, Failed):
                del self._outgoing[out.partition, out.peer]  # the next tick starts a new one if still needed
                return effects
        sender = out.sender
        if sender.phase != "final" and sender.ready_to_fence():
            # No fence: the last chunk waits until nothing is dirty (see the module docstring).
            effects.extend(self._sender_effects(now_ms, out, sender.finish(now_ms)))
        return effects

    # ------------------------------------------------------------ both sides

    def on_message(self, now_ms: int, src: str, partition: int, part: RaftSnapshotPart) -> list[Effect]:
        body, term = part.body, part.term
        if type(term) is not int or not isinstance(body, STREAM_MESSAGES):
            return []
        if not isinstance(body, StreamChunk):
            out = self._outgoing.get((partition, src))
            if out is None or out.term != term:
                return []
            return self._sender_effects(now_ms, out, out.sender.receive(now_ms, body))
        replica = self._raft(partition)
        if replica is None or not replica.snapshot_source(src, term):
            return []  # only the leader of this follower's term may replace its state
        incoming = self._incoming.get(partition)
        if incoming is None or (incoming.leader, incoming.term) != (src, term):
            incoming = self._incoming[partition] = self._receiver(src, term)
        produced = incoming.receiver.receive(body)
        if incoming.overflow:
            del self._incoming[partition]  # too big to stage: the sender runs out of retries and fails
            return []
        effects: list[Effect] = []
        for effect in produced:
            if isinstance(effect, Installed):
                del self._incoming[partition]
                if not self._install(partition, incoming, replica):
                    return []
            else:
                effects.append(self._send(src, partition, term, effect))
        return effects

    # ------------------------------------------------------------ follower side

    def _receiver(self, leader: str, term: int) -> _Incoming:
        incoming = _Incoming(leader, term)
        limit = self._max_staged_bytes

        def apply(items: tuple[Item, ...], phase: Phase) -> None:
            staged = incoming.staged
            for key, payload in items:
                if key == STATE_KEY:
                    if _well_formed_point(payload):
                        incoming.point = payload
                    continue
                old = staged.pop(key, None)
                if old is not None:
                    incoming.staged_bytes -= record_size(key, old)
                if isinstance(payload, MovedRecord):
                    try:
                        record = payload.to_record()
                    except (TypeError, ValueError):
                        continue  # not a record any engine stores (a bug or another version): skip it
                    staged[key] = record
                    incoming.staged_bytes += record_size(key, record)
            if incoming.staged_bytes > limit:
                incoming.overflow = True

        def clear() -> None:
            incoming.staged.clear()
            incoming.staged_bytes = 0
            incoming.point = None

        window = self._stream_options.get("window", 8)
        incoming.receiver = StreamReceiver(apply=apply, clear=clear, window=window)
        return incoming

    def _install(self, partition: int, incoming: _Incoming, replica: RaftReplica) -> bool:
        """Replace the partition's records and log with the staged snapshot, in this step; whether to
        acknowledge it (a stale or duplicate one is acknowledged unchanged; one without a point is not)."""
        point = incoming.point
        if point is None:
            return False
        if not replica.snapshot_needed(point.index, point.term):
            return True  # the follower holds that state already: the leader may replicate from the log
        storage, log = self._storage, self._storage.log(partition)
        bounds = log.bounds()
        if point.term < 0 or point.index < max(bounds.snapshot_index, log.applied_index()):
            return False  # checked before anything changes: install_snapshot would refuse it half-way
        staged = incoming.staged
        after: str | None = None
        while page := storage.records_after(partition, after, _PAGE):
            for key, _ in page:
                if key not in staged:
                    storage.remove(partition, key)
            after = page[-1][0]
        for key in sorted(staged):
            record = staged[key]
            if storage.get_stored(partition, key) != record:
                storage.write(partition, key, record)
        log.install_snapshot(point.index, point.term)
        installed = replica.step(self._replica_clock(), SnapshotInstalled(point.index, point.term, point.config))
        self._replica_effects(partition, installed)
        return True

    # ------------------------------------------------------------ helpers

    def _raft(self, partition: int) -> RaftReplica | None:
        replica = self._replicas().get(partition)
        return replica if isinstance(replica, RaftReplica) else None

    def _send(self, dst: str, partition: int, term: int, effect: SendMessage) -> Send:
        msg = Message(self._node_id, dst, partition, RaftSnapshotPart(term, effect.message))
        return Send(msg, effect.durable or self._always_durable)


def _well_formed_point(payload: object) -> TypeGuard[SnapshotPoint]:
    """A snapshot point a leader could have sent: the codec checks a message's class, not its fields' types."""
    return (
        isinstance(payload, SnapshotPoint)
        and type(payload.index) is int
        and type(payload.term) is int
        and 0 <= payload.index < 2**63
        and 0 <= payload.term < 2**63
        and type(payload.config) is bytes
    )
