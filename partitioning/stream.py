"""Streaming one partition's data to another node in bounded chunks: sans-IO sender and receiver.

A move (issue 13), a follower catching up (snapshot, then log) and hinted handoff all need the same
thing: copy a key-ordered set of items from one node to another while the source keeps changing, within
bounded memory, over a network that drops, duplicates, delays and reorders, and survive a crash of
either end. This module does only that. It moves opaque ``(key, payload)`` items: the payload is
whatever the owner reads (a record, or ``None`` for "this key is now absent"); nothing here knows what
a record is. No IO, no clock, no module-level randomness: time comes in as ``now_ms``, reads and writes
go through injected callables, and messages go out as effects.

Three passes, one ordered stream of chunks:

1. *snapshot*: the sender pages through the partition in key order (``read_page(after_key, max_items,
   max_bytes)``). The last key read is the *cursor*.
2. *delta*: every key the owner writes while the stream runs is reported with ``changed(now_ms, key)``.
   A key after the cursor needs nothing (the snapshot will read it, or not, as it is then); a key at or
   before it was already read and goes into the *dirty set*. After the snapshot the sender sends the
   dirty keys in rounds: a round takes the whole dirty set (sorted, so the receiver writes in key order),
   reads the keys' current payloads (``read_keys``) and sends them; keys written meanwhile go into the
   next round.
3. *final*: when ``ready_to_fence()`` (snapshot done, and the dirty backlog at most ``fence_threshold``
   keys or ``max_delta_rounds`` rounds run) the owner stops writes to the partition and calls
   ``finish``. The sender sends what is still dirty in the final phase; its last chunk carries
   ``last=True``, and once the receiver has applied it the receiver reports ``Installed`` and answers
   ``StreamDone``, and the sender reports ``Complete``.

Why the copy is exact: the receiver applies chunks strictly in sequence order, and the sender numbers
chunks in the order it read their items, so for every key the receiver's last write is the sender's
last read. Every write after a key's last read marks it dirty (it is at or before the cursor once read)
and so causes a later read, and the final phase runs under the fence and empties the dirty set. A key
deleted before the snapshot reaches it is never sent (the receiver starts empty); one deleted after is
sent again with payload ``None``. Items read but not yet sent (a page is cut into chunks) may go stale:
they are behind the cursor, so a write to them marks them dirty and the later copy wins.

Flow control and loss: at most ``window`` chunks are unacknowledged. Acknowledgements are *cumulative*
(``StreamAck(seq)``: every chunk up to ``seq`` is applied), so a lost or reordered ack costs nothing the
next one does not repair. A chunk unacknowledged for ``retry_ms`` is sent again, and again after twice as
long, up to 4 times ``retry_ms`` (``MAX_BACKOFF_SHIFT``) (TCP's retransmission back-off: a receiver that is only busy,
say taking several moves at once, is not sent every chunk again each second); a chunk sent ``max_retries``
times more without an acknowledgement fails the stream (``Failed``), so the owner can abandon the move
instead of waiting forever. The receiver buffers at most ``window - 1`` chunks that
arrive ahead of a gap (the sender never has more in flight) and drops nothing it has not applied or
buffered; a duplicate is acknowledged again. Timers: the sender exposes ``next_deadline_ms()`` rather
than emitting timer effects. There is only one kind of deadline (a retry), ``tick`` is safe to call at
any time (it does nothing early), so the owner keeps one timer per stream and re-arms it at
``next_deadline_ms()`` after each call. The receiver has no timers at all.

Departures from the first sketch of this design, and why:

- *Sessions, ordered.* Every chunk and answer carries ``(stream_id, session)``: an *attempt*.
  ``stream_id`` is the owner's and routes messages to the right object. ``session`` is the sender's:
  drawn at ``start(now_ms)`` as the clock in its high bits and 20 random bits below (a TCP initial
  sequence number, from the injected ``random.Random``), plus one at every restart. Without it a
  receiver cannot tell a new start at seq 0 from a late copy of an old seq 0, and a sender restarted
  with the same stream_id could be sent ``StreamDone`` for a copy its previous life installed, which
  would hold writes neither life's dirty set saw. Attempts compare as the pair, and the receiver only
  ever moves forward: it adopts an attempt at seq 0 only if it orders after the one it holds, ignores
  everything of an older attempt (so no late start, however delayed, can wipe a newer or an installed
  copy, and no remembered set of old sessions is needed), and answers ``StreamRestart`` to a later
  attempt it holds no start of; the sender obeys a restart only for its current session. The owner's
  part: a new sender for the same receiver must order after the old one, which a later ``now_ms`` at
  ``start`` or a larger stream_id gives. A node whose clock stepped back across a crash may build a
  sender that orders before its previous life: the receiver ignores it and it fails after its retries
  (safe; retry with a larger stream_id). Random ids alone were tried first: a fresh receiver adopted a
  late seq 0 of its sender's previous session, retired the current one, and waited forever.
- *Handshake.* The sender keeps only seq 0 in flight until it is acknowledged, then opens the window.
  A receiver holding no session therefore never sees seq 1 before seq 0 unless it lost its state (a
  crash), and answering ``StreamRestart`` to anything but seq 0 is exact instead of a guess that
  reordering would trip. It costs one round trip per stream.
- *Chunks say what the sender holds acknowledged* (``StreamChunk.acked``, refreshed on every resend).
  A receiver that restarted and then met a late copy of its sender's current seq 0 adopts the session
  again, but the chunks it lost were acknowledged by its previous life and will never be resent: it
  would wait on a gap nobody fills until the sender's retries ran out. ``acked >= next seq`` is exactly
  that case (a receiver that kept its state has applied everything it acknowledged), so it answers
  ``StreamRestart`` at once.
- *Writes batch themselves.* ``changed`` sends at once only when nothing is in flight; otherwise the
  next acknowledgement sends the dirty keys gathered meanwhile, in one round.
- *Clearing is a callback, not an effect.* The receiver calls ``clear()`` just before it applies seq 0
  of a new session, in the same call, so the owner cannot apply the new chunk before discarding what an
  earlier attempt left (an effect would be executed only after ``apply`` had already run).
- *Message names* carry a ``Stream`` prefix: the codec registers classes by name across every package
  (``kvstore.forwarding`` already has a ``Done``).
- *Restarts are bounded* (``max_restarts``): a receiver that keeps losing its state, or two senders
  fighting over one receiver, end in ``Failed`` rather than forever.

Crash safety: a restarted receiver is a new object with no session: it answers ``StreamRestart`` to
anything but seq 0, the sender starts over in a new session, and seq 0 makes the receiver clear the
partial copy. A restarted sender is a new object with a new session (same or new ``stream_id``): its
seq 0 makes the receiver clear and start over. Restarting always begins from scratch; resuming from
the cursor would need the receiver's applied prefix to be durable, and that is the owner's storage, not
this module's. A ``StreamRestart`` received after ``finish`` starts over under the fence: snapshot,
then final.

Bounds: the sender holds at most ``window`` chunks (each at most ``max_chunk_items`` items and
``max_chunk_bytes`` bytes as ``size_of`` counts them, or one item if that item alone is larger) plus
one page or key batch read but not sent yet; the receiver buffers at most ``window - 1`` chunks. The
dirty set holds each key at most once, so it never exceeds the
number of distinct keys written since the cursor passed them: at most the partition's keys plus those
deleted during the stream. The owner bounds how long that grows by fencing when ``ready_to_fence()``
says so; ``backlog`` shows its size.

Owner contract (the node):

- Sender side: build ``StreamSender(stream_id, read_page=..., read_keys=..., size_of=..., rng=...)``,
  call ``start(now_ms)``; hand it every ``StreamAck``/``StreamRestart``/``StreamDone`` for its
  stream_id (``receive``); call ``changed(now_ms, key)`` for every key written in the partition, after
  the write is visible to ``read_page``/``read_keys`` and before the next call into the sender; arm a
  timer at ``next_deadline_ms()`` after every call and call ``tick`` when it fires; when
  ``ready_to_fence()`` fence writes and call ``finish(now_ms)``. ``Complete`` means the receiver holds
  the copy as of the fence (hand the partition over); ``Failed`` means give up (unfence, retry later
  with a new sender). A write reported after the last chunk was produced fails the stream: the fence
  leaked. Pick ``max_chunk_bytes`` so a chunk fits a peer frame; one item larger than it still goes,
  alone.
- Receiver side: build ``StreamReceiver(apply=..., clear=...)`` for the partition being received and
  hand it every ``StreamChunk`` for it (one receiver per partition, or per stream_id; it adopts the
  stream_id and session of the first seq 0 it sees); its ``window`` must be at least the sender's (a
  chunk beyond it is answered ``StreamRestart``, so a mismatch fails visibly). Send each ``SendMessage``
  back to the sender's node, honouring ``durable``: ``StreamDone`` is marked durable, because once the
  sender has it the move commits, so the installed copy must be on disk first. Acks need not be: a
  receiver that crashes before syncing has no session after it restarts and makes the sender start
  over. ``Installed`` means the copy is complete as of the fence; whether the node serves it is the move
  protocol's decision. Persist its ``(stream_id, session)`` with the copy and build the receiver of a
  restarted node with ``installed=`` that: a fresh receiver holds no attempt, so a late copy of an old
  seq 0 would clear the installed copy and rebuild only its first chunk, with ``StreamDone`` already on
  its way to the sender. A later attempt at seq 0 still clears an installed copy: the source restarted,
  its fence is gone, and the copy may be stale. Once a move commits, the node serves the partition and
  should hand no more chunks for it to any receiver.

Validation: constructor arguments are checked (ValueError naming the argument). What the injected
readers return is checked against their contract (keys in order, within the page size, one item per
requested key) and a violation is a ValueError: it is a bug in the owner, not peer input. Messages are
peer input: anything unexpected is ignored or answered, never raised.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

Phase = Literal["snapshot", "delta", "final"]
Item = tuple[str, object]
"""A key and its opaque payload; ``None`` as the payload means the key is absent (deleted)."""

ReadPage = Callable[[str | None, int, int], tuple[Sequence[Item], bool]]
ReadKeys = Callable[[list[str]], Sequence[Item]]
SizeOf = Callable[[Item], int]
Apply = Callable[[tuple[Item, ...], Phase], None]
Clear = Callable[[], None]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
CLOCK_BITS = 42  # ms: until the year 2109
RANDOM_BITS = 20
MAX_WINDOW = 1024
# A resent chunk waits twice as long each time, up to 2 ** MAX_BACKOFF_SHIFT times retry_ms.
MAX_BACKOFF_SHIFT = 2

# ---------------------------------------------------------------- messages (peer to peer; register them
# with the codec: ``items`` holds registered messages or None as payloads)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """Chunk ``seq`` (from 0, per session) of a stream: items in the order the receiver must apply them."""

    stream_id: int
    session: int
    seq: int
    acked: int  # every chunk up to here was acknowledged to the sender when it sent this copy
    phase: Phase
    items: tuple[tuple[str, object | None], ...]
    last: bool = False


@dataclass(frozen=True, slots=True)
class StreamAck:
    """Every chunk of the session up to and including ``seq`` is applied (cumulative)."""

    stream_id: int
    session: int
    seq: int


@dataclass(frozen=True, slots=True)
class StreamRestart:
    """The receiver cannot continue this session (it lost its state, or saw an impossible gap): start over."""

    stream_id: int
    session: int


@dataclass(frozen=True, slots=True)
class StreamDone:
    """The receiver applied the session's last chunk: the copy is installed."""

    stream_id: int
    session: int


StreamMessage = StreamChunk | StreamAck | StreamRestart | StreamDone
STREAM_MESSAGES: tuple[type, ...] = (StreamChunk, StreamAck, StreamRestart, StreamDone)


# ---------------------------------------------------------------- effects (to the owner)


@dataclass(slots=True)
class SendMessage:
    """Send ``message`` to the other end; if ``durable``, only once what this node wrote is synced."""

    message: StreamMessage
    durable: bool = False


@dataclass(slots=True)
class Complete:
    """Sender: the receiver acknowledged the last chunk; its copy equals the source as of the fence."""

    stream_id: int


@dataclass(slots=True)
class Failed:
    """Sender: the stream gave up (retries or restarts exhausted, or a write after the fence)."""

    stream_id: int
    reason: str


@dataclass(slots=True)
class Installed:
    """Receiver: the last chunk is applied; the copy is complete. Make it durable together with
    ``(stream_id, session)``, and pass that to the receiver built after a restart (``installed=``)."""

    stream_id: int
    session: int


SenderEffect = SendMessage | Complete | Failed
ReceiverEffect = SendMessage | Installed


def _check_int(name: str, value: object, low: int, high: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, not {value!r:.40}")
    return value


def _check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise ValueError(f"{name} must be callable, not {type(value).__name__}")


# ---------------------------------------------------------------- sender


@dataclass(slots=True)
class _InFlight:
    chunk: StreamChunk
    sent_ms: int
    resends: int = 0


class StreamSender:
    """One transfer, source side. See the module docstring for how an owner drives it."""

    def __init__(
        self,
        stream_id: int,
        *,
        read_page: ReadPage,
        read_keys: ReadKeys,
        size_of: SizeOf,
        rng: random.Random,
        window: int = 8,
        max_chunk_items: int = 512,
        max_chunk_bytes: int = 256 * 1024,
        retry_ms: int = 1000,
        max_retries: int = 10,
        max_restarts: int = 8,
        fence_threshold: int = 64,
        max_delta_rounds: int = 4,
    ) -> None:
        self.stream_id = _check_int("stream_id", stream_id, INT64_MIN)
        for name, fn in (("read_page", read_page), ("read_keys", read_keys), ("size_of", size_of)):
            _check_callable(name, fn)
        if not isinstance(rng, random.Random):
            raise ValueError(f"rng must be a random.Random, not {type(rng).__name__}")
        self._window = _check_int("window", window, 1, MAX_WINDOW)
        self._max_items = _check_int("max_chunk_items", max_chunk_items, 1)
        self._max_bytes = _check_int("max_chunk_bytes", max_chunk_bytes, 1)
        self._retry_ms = _check_int("retry_ms", retry_ms, 1)
        self._max_retries = _check_int("max_retries", max_retries, 0)
        self._max_restarts = _check_int("max_restarts", max_restarts, 0)
        self._fence_threshold = _check_int("fence_threshold", fence_threshold, 0)
        self._max_delta_rounds = _check_int("max_delta_rounds", max_delta_rounds, 0)
        self._read_page = read_page
        self._read_keys = read_keys
        self._size_of = size_of
        self._rng = rng
        self._state: Literal["new", "running", "complete", "failed"] = "new"
        self._finishing = False
        self.restarts = 0
        self.session = -1  # drawn by start()
        self._begin_session()

    # ------------------------------------------------------------ state of one session

    def _begin_session(self) -> None:
        self._next_seq = 0
        self._acked = -1  # every chunk up to here is acknowledged
        self._in_flight: dict[int, _InFlight] = {}
        self._cursor: str | None = None  # last key read by the snapshot pass
        self._snapshot_done = False
        self._pending: deque[Item] = deque()  # read, not yet put in a chunk
        self._pending_is_snapshot = True
        self._dirty: set[str] = set()
        self._round: list[str] = []
        self._round_pos = 0
        self.delta_rounds = 0
        self._last_seq: int | None = None  # the chunk marked last, once made

    # ------------------------------------------------------------ queries

    @property
    def complete(self) -> bool:
        return self._state == "complete"

    @property
    def failed(self) -> bool:
        return self._state == "failed"

    @property
    def sealed(self) -> bool:
        """The last chunk is made: the receiver's copy will be the partition as of then, so writes after it need
        no report (a restart starts over, unsealed, and they must be reported again)."""
        return self._last_seq is not None

    @property
    def unacked(self) -> int:
        """Chunks sent and not yet acknowledged (never more than ``window``)."""
        return len(self._in_flight)

    @property
    def backlog(self) -> int:
        """Items or keys still to send once more: read and unsent, in the current round, and dirty."""
        return len(self._pending) + len(self._round) - self._round_pos + len(self._dirty)

    @property
    def phase(self) -> Phase:
        if not self._snapshot_done:
            return "snapshot"
        return "final" if self._finishing else "delta"

    def ready_to_fence(self) -> bool:
        """The snapshot pass is done and what is left is small, or enough delta rounds ran: fence and finish."""
        return (
            self._state == "running"
            and self._snapshot_done
            and (self.backlog <= self._fence_threshold or self.delta_rounds >= self._max_delta_rounds)
        )

    def next_deadline_ms(self) -> int | None:
        """When ``tick`` has something to do (a retry), or None."""
        if self._state != "running" or not self._in_flight:
            return None
        return min(f.sent_ms + self._wait_ms(f.resends) for f in self._in_flight.values())

    def _wait_ms(self, resends: int) -> int:
        """How long a chunk resent ``resends`` times waits for its acknowledgement before the next resend."""
        return self._retry_ms << min(resends, MAX_BACKOFF_SHIFT)

    # ------------------------------------------------------------ inputs

    def start(self, now_ms: int) -> list[SenderEffect]:
        if self._state != "new":
            raise RuntimeError("start() was called already")
        self._state = "running"
        # Ordered by the clock like a TCP initial sequence number, so a sender built later (after a
        # crash) outranks every session of the one before it; the low bits are random.
        clock = min(max(now_ms, 0), 2**CLOCK_BITS - 1)
        self.session = clock << RANDOM_BITS | self._rng.getrandbits(RANDOM_BITS)
        out: list[SenderEffect] = []
        self._pump(now_ms, out)
        return out

    def changed(self, now_ms: int, key: str) -> list[SenderEffect]:
        """``key`` was written (or deleted) in the partition since the sender last heard of it."""
        if self._state != "running":
            return []
        if self._last_seq is not None:
            return self._fail(f"key {key!r:.60} written after the last chunk was sent: the fence leaked")
        if not (self._snapshot_done or (self._cursor is not None and key <= self._cursor)):
            return []  # the snapshot pass will read it as it is then
        self._dirty.add(key)
        out: list[SenderEffect] = []
        if self._snapshot_done and not self._in_flight:
            self._pump(now_ms, out)  # idle: nothing in flight whose acknowledgement would send it
        return out

    def finish(self, now_ms: int) -> list[SenderEffect]:
        """Writes to the partition are fenced: send what is left in the final phase, the last chunk marked."""
        if self._state == "new":
            raise RuntimeError("finish() before start()")
        out: list[SenderEffect] = []
        if self._state == "running" and not self._finishing:
            self._finishing = True
            self._pump(now_ms, out)
        return out

    def receive(self, now_ms: int, message: object) -> list[SenderEffect]:
        """An answer from the receiver. Anything not for this stream's current session is ignored."""
        if self._state != "running" or not isinstance(message, StreamAck | StreamRestart | StreamDone):
            return []
        if message.stream_id != self.stream_id or message.session != self.session:
            return []
        out: list[SenderEffect] = []
        if isinstance(message, StreamAck):
            if self._acked < message.seq < self._next_seq:
                for seq in range(self._acked + 1, message.seq + 1):
                    del self._in_flight[seq]
                self._acked = message.seq
                self._pump(now_ms, out)
        elif isinstance(message, StreamDone):
            if self._last_seq is not None:
                self._in_flight.clear()
                self._acked = self._last_seq
                self._state = "complete"
                out.append(Complete(self.stream_id))
        else:
            if self.restarts >= self._max_restarts:
                return self._fail(f"the receiver asked to start over more than {self._max_restarts} times")
            self.restarts += 1
            self.session += 1  # a restart outranks the session it replaces
            self._begin_session()
            self._pump(now_ms, out)
        return out

    def tick(self, now_ms: int) -> list[SenderEffect]:
        """Resend every chunk unacknowledged for ``retry_ms``; fail one resent ``max_retries`` times already."""
        if self._state != "running":
            return []
        out: list[SenderEffect] = []
        for flight in self._in_flight.values():
            if flight.sent_ms + self._wait_ms(flight.resends) > now_ms:
                continue
            if flight.resends >= self._max_retries:
                return self._fail(
                    f"chunk {flight.chunk.seq} not acknowledged after {flight.resends} resends "
                    f"({self._retry_ms} ms apart at first, backing off)"
                )
            flight.resends += 1
            flight.sent_ms = now_ms
            if flight.chunk.acked != self._acked:
                flight.chunk = replace(flight.chunk, acked=self._acked)
            out.append(SendMessage(flight.chunk))
        return out

    # ------------------------------------------------------------ internals

    def _fail(self, reason: str) -> list[SenderEffect]:
        self._state = "failed"
        self._in_flight.clear()
        self._pending.clear()
        self._dirty.clear()
        self._round = []
        return [Failed(self.stream_id, reason)]

    def _pump(self, now_ms: int, out: list[SenderEffect]) -> None:
        """Send new chunks while the window has room (one until seq 0 is acknowledged)."""
        while self._last_seq is None:
            limit = self._window if self._acked >= 0 else 1
            if len(self._in_flight) >= limit:
                return
            chunk = self._next_chunk()
            if chunk is None:
                return
            self._in_flight[chunk.seq] = _InFlight(chunk, now_ms)
            out.append(SendMessage(chunk))

    def _next_chunk(self) -> StreamChunk | None:
        if not self._pending:
            self._refill()
        if self._pending:
            items: list[Item] = []
            size = 0
            while self._pending and len(items) < self._max_items:
                item = self._pending[0]
                item_size = self._size_of(item)
                if items and size + item_size > self._max_bytes:
                    break
                items.append(self._pending.popleft())
                size += item_size
            phase: Phase = "snapshot" if self._pending_is_snapshot else self.phase
        elif self._snapshot_done and self._finishing:
            items, phase = [], "final"
        else:
            return None
        last = phase == "final" and self.backlog == 0
        chunk = StreamChunk(self.stream_id, self.session, self._next_seq, self._acked, phase, tuple(items), last)
        if last:
            self._last_seq = self._next_seq
        self._next_seq += 1
        return chunk

    def _refill(self) -> None:
        """Read the next page of the snapshot, or the next batch of the current delta round."""
        if not self._snapshot_done:
            after = self._cursor
            items, end = self._read_page(after, self._max_items, self._max_bytes)
            items = list(items)
            if len(items) > self._max_items:
                raise ValueError(f"read_page returned {len(items)} items, more than max_items={self._max_items}")
            for key, _ in items:
                if not isinstance(key, str) or (after is not None and key <= after):
                    raise ValueError(f"read_page returned key {key!r:.60} out of order (after {after!r:.60})")
                after = key
            if not items and not end:
                raise ValueError("read_page returned no items without reaching the end")
            self._cursor = after
            self._snapshot_done = bool(end)
            if items:
                self._pending.extend(items)
                self._pending_is_snapshot = True
                return
        if self._round_pos >= len(self._round):
            if not self._dirty:
                return
            self._round = sorted(self._dirty)
            self._round_pos = 0
            self._dirty.clear()
            self.delta_rounds += 1
        keys = self._round[self._round_pos : self._round_pos + self._max_items]
        self._round_pos += len(keys)
        if self._round_pos >= len(self._round):
            self._round, self._round_pos = [], 0
        read = list(self._read_keys(keys))
        if [key for key, _ in read] != keys:
            raise ValueError("read_keys must return one item per requested key, in the order asked")
        self._pending.extend(read)
        self._pending_is_snapshot = False


# ---------------------------------------------------------------- receiver


class StreamReceiver:
    """One partition's incoming copy, destination side. Applies chunks of one session strictly in order."""

    def __init__(
        self,
        *,
        apply: Apply,
        clear: Clear,
        window: int = 8,
        installed: tuple[int, int] | None = None,
    ) -> None:
        """``installed``: the ``(stream_id, session)`` of a copy this node installed and made durable before
        it restarted; chunks of that session are answered ``StreamDone``, never applied again."""
        _check_callable("apply", apply)
        _check_callable("clear", clear)
        self._window = _check_int("window", window, 1, MAX_WINDOW)
        self._apply = apply
        self._clear = clear
        self._identity: tuple[int, int] | None = installed  # (stream_id, session) being received
        self._next_seq = 0
        self._buffer: dict[int, StreamChunk] = {}
        self._installed = installed is not None

    @property
    def stream_id(self) -> int | None:
        return None if self._identity is None else self._identity[0]

    @property
    def installed(self) -> bool:
        return self._installed

    @property
    def buffered(self) -> int:
        """Chunks held ahead of a gap (never more than ``window - 1``)."""
        return len(self._buffer)

    @property
    def applied_through(self) -> int:
        """The last seq applied in the current session (-1: none)."""
        return self._next_seq - 1

    def receive(self, chunk: StreamChunk) -> list[ReceiverEffect]:
        identity = (chunk.stream_id, chunk.session)
        if identity != self._identity:
            if self._identity is not None and identity < self._identity:
                return []  # an attempt older than ours: a late copy, never a new start
            if chunk.seq != 0:
                # A later attempt than ours (or we hold none) that we never started: we lost our state.
                return [SendMessage(StreamRestart(*identity))]
            self._identity = identity
            self._next_seq = 0
            self._buffer.clear()
            self._installed = False
            self._clear()
        if self._installed:
            return [SendMessage(StreamDone(*identity), durable=True)]
        if chunk.acked >= self._next_seq:
            # The sender holds acknowledged a chunk we do not have: we lost what we applied (a restart
            # that then met a late copy of seq 0). It will never send that chunk again.
            return [SendMessage(StreamRestart(*identity))]
        seq = chunk.seq
        if seq < self._next_seq:
            return [SendMessage(StreamAck(*identity, self._next_seq - 1))]
        if seq >= self._next_seq + self._window:
            return [SendMessage(StreamRestart(*identity))]  # beyond any window the sender may have open
        if seq > self._next_seq:
            self._buffer.setdefault(seq, chunk)
            return []
        current: StreamChunk | None = chunk
        while current is not None:
            self._apply(current.items, current.phase)
            self._next_seq += 1
            if current.last:
                self._installed = True
                self._buffer.clear()
                return [Installed(*identity), SendMessage(StreamDone(*identity), durable=True)]
            current = self._buffer.pop(self._next_seq, None)
        return [SendMessage(StreamAck(*identity, self._next_seq - 1))]
