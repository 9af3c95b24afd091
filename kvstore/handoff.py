"""Moving one partition from its owner to another node (``single`` mode): every transition of both ends.

The owner of partition ``p`` gets ``MovePartition(p, target)`` and streams ``p`` to ``target`` with
``partitioning.stream`` (snapshot, delta rounds, then a final phase under a fence); the target writes what
arrives into its storage and, once the last chunk is applied, installs the map entry ``p -> (target,)`` at
the source's epoch of ``p`` plus one and serves ``p``. The source hands ``p`` over when the stream completes:
it installs the same entry, which drops its replica, and removes its records of ``p``. ``Mover`` holds all of
this state and returns effects, as ``kvstore.forwarding.Forwarder`` does; the node routes inputs to it and
asks it whether a partition is fenced and which writes to report.

Source:

- A move starts only at the partition's current owner, to a member other than itself, one per partition, at
  most ``MAX_OUTGOING_MOVES`` at a time; anything else is ignored and ``refusal`` names why (the input has no
  one to answer). The stream id is ``p``'s epoch at the source when the move starts: the target installs
  ``epoch + 1``.
- Payloads are ``MovedRecord`` (a stored record: tombstones and expired ones too; ``None`` for a key now
  absent) and, under the reserved key ``""`` (never a user key, and first in key order),
  ``MovedPartitionState`` with the applied index, which the target sets so versions go on growing, and the
  source's map, which the target merges before it installs (in range mode, splits it may not have heard of). ``""`` is
  read first in the snapshot and marked changed just before ``finish``, so the final phase carries the
  final index.
- Writes go on while the stream runs: the node reports every write op it applied (``changed``). The TTL
  sweep does not run on a moving partition (the node re-arms its timer instead): a purge would be one more
  writer to report, and expired values are hidden from reads anyway; the new owner purges them.
- Fence: when the sender is ready and the target has acknowledged a chunk of it, the source puts
  ``MoveFence(target, epoch)`` in its metadata under ``move/<p>`` (durable with the next sync), stops serving
  ``p`` (every op for it fails ``unavailable``, definitely), and finishes the stream. Every stream message
  sent after the fence is a durable ``Send``: the driver holds it until the sync that makes the fence durable,
  so the target can never install a copy whose source might forget, in a crash, that it gave the partition
  away. Waiting for an acknowledgement is this module's addition: a small partition is read in one page, so
  the sender is ready before the target said a word, and a fence never lifts, so fencing towards a target that
  is down would make the partition unavailable until it comes back; an unfenced move to it fails and is
  abandoned instead.
- ``Complete``: hand over. ``Failed`` before the fence: the move is abandoned (nothing was promised; a later
  ``MovePartition`` may try again). ``Failed`` after it: never unfenced (the target may have installed); a
  new sender (a new session) is started ``RETRY_MS`` later and finishes at once, until the move completes.
  Waiting a little rather than starting at once also makes the new session order after the failed one (a
  session is the clock in its high bits).
- Restart: ``on_started`` finds every fence kept in metadata and finishes those moves the same way; the
  node asks ``fenced`` before serving, so a fenced partition is never served again by its source.
- The fence record is cleared by writing an empty value (storage has no delete of metadata; an empty value
  is no encoding of a ``MoveFence``, so it reads as "no fence").

Target:

- One ``StreamReceiver`` per partition it does not hold, built at the first chunk. Its ``clear`` removes every
  record of ``p`` (paged through ``records_after``); its ``apply`` writes or removes records and remembers the
  carried applied index. A chunk from another source replaces the receiver only if its stream id (epoch) is
  higher (a newer owner); otherwise it is ignored. Peer payloads that are not ``MovedRecord``,
  ``MovedPartitionState`` or ``None`` are skipped (peer input never raises).
- ``Installed``: set the applied index, install ``p -> (me,)`` at ``stream_id + 1``, keep
  ``MoveInstalled(source, stream_id, session)`` under ``moved-in/<p>``, and let the receiver's ``StreamDone``
  go out durable (with the install).
- Chunks for a partition this node already holds, or of an epoch older than its map's for ``p``, are never
  given to a receiver (a later seq 0 would clear an installed copy). A chunk of the attempt it installed is
  answered ``StreamDone`` (durable), which completes a source that missed the first one. Any other such chunk
  (a source that restarted under its fence and started a new session, or one whose partition moved on since)
  is answered with this node's map (``MapUpdate``, durable): the source learns that ``p`` is past its epoch
  and hands over exactly as on ``Complete`` (``on_map_changed``). A ``MapUpdate`` rather than a faked
  ``StreamDone`` because the new sender only accepts ``StreamDone`` once it has produced its last chunk, and
  because any node that knows the newer map can settle the source this way.
- Restart: a node holding records of a partition its map does not give it has a partial copy (it crashed
  mid-copy, or a source abandoned the move): ``on_started`` clears them, so stale copies never linger and a
  later attempt starts from empty. An installed copy is held under the map (installed in the same step, so
  the same sync) and is kept.

Moves start only under ``fsync = "always"`` or ``"batch"``: under ``"never"`` nothing is fsynced, and a power
loss could forget a fence after the target installed, leaving two nodes serving the partition.

Bounds: one move per partition, at most ``MAX_OUTGOING_MOVES`` outgoing, one receiver per partition, and the
stream's own windows and retries.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kvstore import codec
from kvstore.effects import CancelTimer, Effect, Send, SetTimer
from kvstore.messages import (
    NODE_PARTITION,
    MapUpdate,
    Message,
    MovedPartitionState,
    MovedRecord,
    MoveFence,
    MoveInstalled,
)
from kvstore.storage.base import Storage, record_size
from partitioning.partition_map import PartitionMap
from partitioning.stream import (
    Complete,
    Failed,
    Installed,
    Item,
    Phase,
    SendMessage,
    StreamAck,
    StreamChunk,
    StreamDone,
    StreamReceiver,
    StreamRestart,
    StreamSender,
)

MOVE_TIMER_PREFIX = "move/"
FENCE_META_PREFIX = "move/"
INSTALLED_META_PREFIX = "moved-in/"
# Outgoing moves one node runs at a time (fenced ones included).
MAX_OUTGOING_MOVES = 4
# How long a fenced move waits after a failed attempt before it starts the next one.
RETRY_MS = 1000
# Records removed per storage read while clearing a partition.
CLEAR_PAGE = 512
# Stream ids are partition epochs; the target installs one more, which must still be a codec int.
MAX_STREAM_ID = 2**62
# The reserved key of the partition's state in a stream (keys are non-empty).
STATE_KEY = ""
_NO_VALUE = b""
_T = TypeVar("_T")


@dataclass(slots=True)
class MoveStats:
    """What this node's outgoing moves did since it started: ``/metrics`` shows it."""

    started: int = 0
    completed: int = 0
    abandoned: int = 0
    # Keys and values streamed (``record_size`` of every item sent, resends included).
    bytes_sent: int = 0
    # From start to hand-over, summed over the completed moves this life started.
    completed_ms: int = 0


@dataclass(slots=True)
class _Outgoing:
    partition: int
    target: str
    epoch: int
    sender: StreamSender | None
    fenced: bool = False
    # The target acknowledged a chunk of the current sender: it is up and took the attempt.
    answered: bool = False
    # When this life took the move on (started it, or found its fence at a restart).
    started_ms: int = 0


@dataclass(slots=True)
class _Incoming:
    partition: int
    source: str
    receiver: StreamReceiver
    applied_index: int | None = None
    source_map: MapUpdate | None = None


class Mover:
    """Both ends of partition moves for one node: the moves it sends and the copies it receives."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        rng: random.Random,
        *,
        get_map: Callable[[], PartitionMap],
        install_map: Callable[[PartitionMap], None],
        always_durable: bool,
        stream_options: dict[str, int] | None = None,
        moves_refused: str | None = None,
        clear_unheld: bool = True,
    ) -> None:
        self._node_id = node_id
        self._storage = storage
        self._rng = rng
        self._get_map = get_map
        self._install_map = install_map
        self._always_durable = always_durable
        self._stream_options = dict(stream_options or {})
        # Why this node starts no move at all (None: it does); it still receives them.
        self._moves_refused = moves_refused
        # Whether a restart clears the records of partitions the map does not put here (partial copies of moves).
        # Leader mode keeps them: they go with the partition's Raft log and applied index, which stay too.
        self._clear_unheld = clear_unheld
        # Outgoing moves by partition: the node checks ``partition in moving`` on every op, so it is public.
        self.moving: dict[int, _Outgoing] = {}
        self._incoming: dict[int, _Incoming] = {}
        # Per partition, the (stream_id, session) of the copy this node installed.
        self._installed: dict[int, tuple[int, int]] = {}
        # Why the last MovePartition was ignored (None: it started).
        self.refusal: str | None = None
        self.stats = MoveStats()
        # The latest time an input brought: on_map_changed has none of its own.
        self._now_ms = 0

    # ------------------------------------------------------------ queries

    @property
    def receiving(self) -> set[int]:
        """Partitions this node is receiving a copy of now."""
        return set(self._incoming)

    def fenced(self, partition: int) -> bool:
        out = self.moving.get(partition)
        return out is not None and out.fenced

    # ------------------------------------------------------------ source side

    def start(self, now_ms: int, partition: int, target: str) -> list[Effect]:
        """``MovePartition(partition, target)``: start the move, or set ``refusal`` and do nothing."""
        self.refusal = self._check_move(partition, target)
        if self.refusal is not None:
            return []
        epoch = self._get_map().epoch_of(partition)
        out = _Outgoing(partition, target, epoch, None, started_ms=now_ms)
        self.moving[partition] = out
        self.stats.started += 1
        return self._start_sender(now_ms, out)

    def _check_move(self, partition: int, target: str) -> str | None:
        if self._moves_refused is not None:
            return self._moves_refused
        partition_map = self._get_map()
        if isinstance(partition, bool) or not isinstance(partition, int):
            return "the partition must be an int"
        if not 0 <= partition < partition_map.partition_count:
            return f"no partition {partition}"
        if partition_map.owner(partition) != self._node_id:
            return f"{self._node_id} does not own partition {partition}"
        if target == self._node_id or target not in partition_map.active:
            return f"{target!r:.60} is not another active member of the cluster"
        if partition in self.moving:
            return f"partition {partition} is already moving"
        if len(self.moving) >= MAX_OUTGOING_MOVES:
            return f"{self._node_id} already runs {MAX_OUTGOING_MOVES} moves"
        return None

    def changed(self, now_ms: int, partition: int, key: str) -> list[Effect]:
        """A write op for ``partition`` was applied here (the node calls this only for a moving partition)."""
        out = self.moving.get(partition)
        if out is None or out.sender is None:
            return []
        return self._sender_effects(now_ms, out, out.sender.changed(now_ms, key))

    def on_timer(self, now_ms: int, key: str) -> list[Effect]:
        partition = int(key[len(MOVE_TIMER_PREFIX) :])
        out = self.moving.get(partition)
        if out is None:
            return []
        if out.sender is None:
            return self._start_sender(now_ms, out)  # a fenced move waiting to try again
        return self._sender_effects(now_ms, out, out.sender.tick(now_ms))

    def on_started(self, now_ms: int) -> list[Effect]:
        """After a restart: finish every fenced move, and clear partial copies of partitions not held here."""
        effects: list[Effect] = []
        partition_map = self._get_map()
        for partition in range(partition_map.partition_count):
            installed = _decoded(self._storage.get_meta(INSTALLED_META_PREFIX + str(partition)), MoveInstalled)
            if installed is not None:
                self._installed[partition] = (installed.stream_id, installed.session)
            fence = _decoded(self._storage.get_meta(FENCE_META_PREFIX + str(partition)), MoveFence)
            if fence is None:
                continue
            if partition_map.epoch_of(partition) > fence.epoch or partition_map.owner(partition) != self._node_id:
                self._hand_over(partition)  # handed over already; only the cleanup was lost
                continue
            out = _Outgoing(partition, fence.target, fence.epoch, None, fenced=True, started_ms=now_ms)
            self.moving[partition] = out
            effects.extend(self._start_sender(now_ms, out))
        if self._clear_unheld:
            held = set(partition_map.partitions_of(self._node_id))
            for partition in self._storage.partitions():
                if partition not in held:
                    self._clear(partition)
        return effects

    def on_map_changed(self) -> list[Effect]:
        """The node's map changed: a move whose partition is now past its epoch is over (its target
        installed it, and another node told this one)."""
        partition_map = self._get_map()
        effects: list[Effect] = []
        for partition, out in list(self.moving.items()):
            if partition_map.epoch_of(partition) > out.epoch:
                del self.moving[partition]
                effects.append(CancelTimer(MOVE_TIMER_PREFIX + str(partition)))
                self._hand_over(partition)
                self._completed(self._now_ms, out)
        return effects

    def _start_sender(self, now_ms: int, out: _Outgoing) -> list[Effect]:
        p = out.partition
        read_page, read_keys = partition_readers(self._storage, p, lambda: self._state_of(p))
        sender = StreamSender(
            out.epoch,
            read_page=read_page,
            read_keys=read_keys,
            size_of=item_size,
            rng=self._rng,
            **self._stream_options,
        )
        out.sender = sender
        out.answered = False
        effects = self._sender_effects(now_ms, out, sender.start(now_ms))
        if out.fenced and out.sender is sender:
            effects.extend(self._sender_effects(now_ms, out, sender.finish(now_ms)))
        return effects

    def _on_answer(
        self, now_ms: int, src: str, partition: int, body: StreamAck | StreamRestart | StreamDone
    ) -> list[Effect]:
        out = self.moving.get(partition)
        if out is None or out.sender is None or src != out.target:
            return []
        if isinstance(body, StreamAck) and (body.stream_id, body.session) == (out.epoch, out.sender.session):
            out.answered = True
        return self._sender_effects(now_ms, out, out.sender.receive(now_ms, body))

    def _sender_effects(self, now_ms: int, out: _Outgoing, produced: Sequence[object]) -> list[Effect]:
        """Translate a sender's effects, fence when it is ready, and re-arm the move's timer."""
        effects: list[Effect] = []
        p = out.partition
        timer = MOVE_TIMER_PREFIX + str(p)
        self._now_ms = max(self._now_ms, now_ms)
        for effect in produced:
            if isinstance(effect, SendMessage):
                if isinstance(effect.message, StreamChunk):
                    self.stats.bytes_sent += sum(item_size(item) for item in effect.message.items)
                msg = Message(self._node_id, out.target, p, effect.message)
                effects.append(Send(msg, out.fenced or effect.durable or self._always_durable))
            elif isinstance(effect, Complete):
                del self.moving[p]
                effects.append(CancelTimer(timer))
                partition_map = self._get_map()
                if partition_map.epoch_of(p) == out.epoch:
                    self._install_map(partition_map.with_entry(p, (out.target,), out.epoch + 1))
                self._hand_over(p)
                self._completed(now_ms, out)
                return effects
            elif isinstance(effect, Failed):
                if not out.fenced:
                    del self.moving[p]  # abandoned: nothing was promised, a later MovePartition may retry
                    self.stats.abandoned += 1
                    effects.append(CancelTimer(timer))
                    return effects
                out.sender = None  # never unfenced: try again in a while, in a new session
                effects.append(SetTimer(timer, now_ms + RETRY_MS))
                return effects
        sender = out.sender
        assert sender is not None
        if not out.fenced and out.answered and sender.ready_to_fence():
            out.fenced = True
            self._storage.put_meta(FENCE_META_PREFIX + str(p), codec.encode(MoveFence(out.target, out.epoch)))
            # The final phase carries the applied index as of the fence.
            more = sender.changed(now_ms, STATE_KEY)
            more.extend(sender.finish(now_ms))
            effects.extend(self._sender_effects(now_ms, out, more))
            return effects
        deadline = sender.next_deadline_ms()
        effects.append(CancelTimer(timer) if deadline is None else SetTimer(timer, deadline))
        return effects

    def _completed(self, now_ms: int, out: _Outgoing) -> None:
        self.stats.completed += 1
        self.stats.completed_ms += max(now_ms - out.started_ms, 0)

    def _hand_over(self, partition: int) -> None:
        """The partition is the target's now: forget its records here, and the fence."""
        self._clear(partition)
        name = FENCE_META_PREFIX + str(partition)
        if self._storage.get_meta(name):
            self._storage.put_meta(name, _NO_VALUE)

    # ------------------------------------------------------------ target side

    def on_message(
        self, now_ms: int, src: str, partition: int, body: StreamChunk | StreamAck | StreamRestart | StreamDone
    ) -> list[Effect]:
        partition_map = self._get_map()
        if not 0 <= partition < partition_map.partition_count:
            return []
        if not isinstance(body, StreamChunk):
            return self._on_answer(now_ms, src, partition, body)
        if not 1 <= body.stream_id < MAX_STREAM_ID:
            return []  # no epoch a partition can have
        if partition_map.epoch_of(partition) == body.stream_id and partition_map.owner(partition) != src:
            return []  # the sender does not own the partition at the epoch it names: a bug, never a move
        if self._installed.get(partition) == (body.stream_id, body.session) and self._holds(partition):
            return [self._send(src, partition, StreamDone(body.stream_id, body.session), durable=True)]
        if self._holds(partition) or partition_map.epoch_of(partition) > body.stream_id:
            update = Message(self._node_id, src, NODE_PARTITION, MapUpdate.of(partition_map))
            return [Send(update, True)]
        incoming = self._incoming.get(partition)
        if incoming is not None and incoming.source != src:
            current = incoming.receiver.stream_id
            if current is not None and body.stream_id <= current:
                return []  # another source's stream, not newer than the one being received: ignore it
            incoming = None
        if incoming is None:
            incoming = self._receiver(partition, src)
            self._incoming[partition] = incoming
        effects: list[Effect] = []
        for effect in incoming.receiver.receive(body):
            if isinstance(effect, Installed):
                self._installed_copy(incoming, effect)
            else:
                effects.append(self._send(src, partition, effect.message, effect.durable))
        return effects

    def _holds(self, partition: int) -> bool:
        return self._node_id in self._get_map().replicas[partition]

    def _receiver(self, partition: int, src: str) -> _Incoming:
        storage = self._storage
        incoming: _Incoming

        def apply(items: tuple[Item, ...], phase: Phase) -> None:
            for key, payload in items:
                if key == STATE_KEY:
                    if isinstance(payload, MovedPartitionState):
                        incoming.applied_index = payload.applied_index
                        incoming.source_map = payload.source_map
                elif payload is None:
                    storage.remove(partition, key)
                elif isinstance(payload, MovedRecord):
                    try:
                        storage.write(partition, key, payload.to_record())
                    except (TypeError, ValueError):
                        continue  # not a record any engine stores (a bug or another version): skip it

        def clear() -> None:
            incoming.applied_index = None
            incoming.source_map = None
            self._clear(partition)

        window = self._stream_options.get("window", 8)
        incoming = _Incoming(partition, src, StreamReceiver(apply=apply, clear=clear, window=window))
        return incoming

    def _installed_copy(self, incoming: _Incoming, installed: Installed) -> None:
        p = incoming.partition
        del self._incoming[p]
        log = self._storage.log(p)
        if incoming.applied_index is not None and incoming.applied_index > log.applied_index():
            self._storage.set_applied_index(p, incoming.applied_index)
        marker = MoveInstalled(incoming.source, installed.stream_id, installed.session)
        self._storage.put_meta(INSTALLED_META_PREFIX + str(p), codec.encode(marker))
        self._installed[p] = (installed.stream_id, installed.session)
        partition_map = self._get_map()
        if incoming.source_map is not None:
            # What the source knew at its fence: in range mode, every split of this partition and of its
            # neighbours that this node may not have heard of (installing over an older view of the ranges would
            # serve the wrong keys, and the source adopts what is installed).
            with contextlib.suppress(ValueError):
                partition_map = partition_map.merge(incoming.source_map.to_map())
        if not partition_map.knows(self._node_id):
            # Admitted, but the order's map never reached this node (lost, or not synced before a crash): a
            # placeholder entry below any real one (version 1) names it until the real one arrives.
            partition_map = partition_map.with_placeholder(self._node_id)
        self._install_map(partition_map.with_entry(p, (self._node_id,), installed.stream_id + 1))

    # ------------------------------------------------------------ helpers

    def _state_of(self, partition: int) -> MovedPartitionState:
        applied = self._storage.log(partition).applied_index()
        return MovedPartitionState(applied, MapUpdate.of(self._get_map()))

    def _send(self, dst: str, partition: int, body: object, durable: bool) -> Send:
        return Send(Message(self._node_id, dst, partition, body), durable or self._always_durable)

    def _clear(self, partition: int) -> None:
        storage = self._storage
        while True:
            page = storage.records_after(partition, None, CLEAR_PAGE)
            if not page:
                return
            for key, _ in page:
                storage.remove(partition, key)


def partition_readers(
    storage: Storage, partition: int, state: Callable[[], object]
) -> tuple[Callable[[str | None, int, int], tuple[Sequence[Item], bool]], Callable[[list[str]], Sequence[Item]]]:
    """A ``StreamSender``'s ``read_page`` and ``read_keys`` over ``partition``'s stored records (``MovedRecord``;
    None for an absent key), with ``state()`` under the reserved key ``STATE_KEY``, first in key order."""

    def read_page(after: str | None, max_items: int, max_bytes: int) -> tuple[Sequence[Item], bool]:
        items: list[Item] = []
        size = 0
        if after is None:
            items.append((STATE_KEY, state()))
            size = 16
            after = STATE_KEY
            if len(items) >= max_items:
                return items, False
        limit = max_items - len(items)
        records = storage.records_after(partition, after, limit)
        for key, record in records:
            size_of_record = record_size(key, record)
            if items and size + size_of_record > max_bytes:
                return items, False
            items.append((key, MovedRecord.of(record)))
            size += size_of_record
        return items, len(records) < limit

    def read_keys(keys: list[str]) -> Sequence[Item]:
        items: list[Item] = []
        for key in keys:
            if key == STATE_KEY:
                items.append((key, state()))
                continue
            record = storage.get_stored(partition, key)
            items.append((key, None if record is None else MovedRecord.of(record)))
        return items

    return read_page, read_keys


def item_size(item: Item) -> int:
    """What one streamed item weighs against a chunk's byte budget."""
    key, payload = item
    if isinstance(payload, MovedRecord):
        size = len(key) + len(payload.context) + (0 if payload.value is None else len(payload.value))
        for value, _, context in payload.siblings:
            size += len(context) + (0 if value is None else len(value))
        return size
    return len(key) + 16


def _decoded(data: bytes | None, kind: type[_T]) -> _T | None:
    """The ``kind`` encoded in ``data``; None for nothing, an empty marker, or anything unreadable."""
    if not data:
        return None
    try:
        value = codec.decode(data)
    except ValueError:
        return None
    return value if isinstance(value, kind) else None
