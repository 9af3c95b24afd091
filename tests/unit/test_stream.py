"""The partition streaming primitive: exact copies over a lossy network, writes during the stream, crashes
of either end, and every bound (window, buffer, retries, chunk sizes). Time is virtual throughout."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedDict

from partitioning.stream import (
    STREAM_MESSAGES,
    Complete,
    Failed,
    Installed,
    Item,
    Phase,
    SendMessage,
    StreamAck,
    StreamChunk,
    StreamDone,
    StreamMessage,
    StreamReceiver,
    StreamRestart,
    StreamSender,
)


def size_of(item: Item) -> int:
    key, payload = item
    return len(key) + (len(payload) if isinstance(payload, str) else 0)


@dataclass
class Config:
    window: int = 4
    max_chunk_items: int = 5
    max_chunk_bytes: int = 60
    retry_ms: int = 50
    max_retries: int = 40
    max_restarts: int = 8
    fence_threshold: int = 3
    max_delta_rounds: int = 3
    receiver_window: int | None = None  # defaults to window


@dataclass
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay_ms: int = 1  # delays are uniform in 1..max: a spread reorders
    late: float = 0.0  # chance a copy is held back up to LATE_MS more: it arrives after retries and restarts


@dataclass
class Stats:
    chunks: list[StreamChunk] = field(default_factory=list)
    max_unacked_seen: int = 0
    max_buffered: int = 0
    installs: int = 0
    clears: int = 0
    applied_phases: list[Phase] = field(default_factory=list)


class Harness:
    """A source partition, a destination copy, one sender and one receiver, and a seeded network between
    them that drops, duplicates and delays (so reorders) every message. Events run on a virtual clock."""

    def __init__(
        self,
        data: dict[str, str],
        *,
        seed: int = 1,
        config: Config | None = None,
        faults: Faults | None = None,
        stream_id: int = 7,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or Config()
        self.faults = faults or Faults()
        self.source: SortedDict = SortedDict(data)
        self.dest: dict[str, object] = {}
        self.now = 0
        self.net: list[tuple[int, int, str, StreamMessage]] = []
        self._net_seq = 0
        self.stats = Stats()
        self.outcome: Complete | Failed | None = None
        self.fenced = False
        self.final_source: dict[str, str] | None = None
        self.installed_identity: tuple[int, int] | None = None  # made durable with the copy
        # Independent window check: per session, the highest seq sent and the highest ack delivered.
        self.sent_max: dict[int, int] = {}
        self.acked_max: dict[int, int] = {}
        self.stream_id = stream_id
        self.sender = self.new_sender(stream_id)
        self.receiver = self.new_receiver()
        self.handle_sender(self.sender.start(self.now))

    # ------------------------------------------------------------ the two ends

    def read_page(self, after: str | None, max_items: int, max_bytes: int) -> tuple[list[Item], bool]:
        keys = self.source.irange(minimum=after, inclusive=(False, True)) if after is not None else iter(self.source)
        items: list[Item] = []
        size = 0
        for key in keys:
            item = (key, self.source[key])
            if items and (len(items) == max_items or size + size_of(item) > max_bytes):
                return items, False
            items.append(item)
            size += size_of(item)
        return items, True

    def read_keys(self, keys: list[str]) -> list[Item]:
        return [(key, self.source.get(key)) for key in keys]

    def apply(self, items: tuple[Item, ...], phase: Phase) -> None:
        self.stats.applied_phases.append(phase)
        for key, payload in items:
            if payload is None:
                self.dest.pop(key, None)
            else:
                self.dest[key] = payload

    def clear(self) -> None:
        self.stats.clears += 1
        self.installed_identity = None
        self.dest.clear()

    def new_sender(self, stream_id: int) -> StreamSender:
        c = self.config
        return StreamSender(
            stream_id,
            read_page=self.read_page,
            read_keys=self.read_keys,
            size_of=size_of,
            rng=random.Random(self.rng.getrandbits(32)),
            window=c.window,
            max_chunk_items=c.max_chunk_items,
            max_chunk_bytes=c.max_chunk_bytes,
            retry_ms=c.retry_ms,
            max_retries=c.max_retries,
            max_restarts=c.max_restarts,
            fence_threshold=c.fence_threshold,
            max_delta_rounds=c.max_delta_rounds,
        )

    def new_receiver(self) -> StreamReceiver:
        return StreamReceiver(
            apply=self.apply,
            clear=self.clear,
            window=self.config.receiver_window or self.config.window,
            installed=self.installed_identity,
        )

    # ------------------------------------------------------------ network

    def send(self, dst: str, message: StreamMessage) -> None:
        f = self.faults
        if self.rng.random() < f.drop:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self._net_seq += 1
            at = self.now + self.rng.randint(1, f.max_delay_ms)
            if self.rng.random() < f.late:
                at += self.rng.randint(1, LATE_MS)
            heapq.heappush(self.net, (at, self._net_seq, dst, message))

    def handle_sender(self, effects: Sequence[object]) -> None:
        assert self.sender.unacked <= self.config.window
        self.stats.max_unacked_seen = max(self.stats.max_unacked_seen, self.sender.unacked)
        for effect in effects:
            if isinstance(effect, SendMessage):
                chunk = effect.message
                assert isinstance(chunk, StreamChunk)
                self.check_chunk(chunk)
                self.send("receiver", chunk)
            elif isinstance(effect, Complete | Failed):
                assert self.outcome is None, "a second outcome"
                self.outcome = effect
            else:
                raise AssertionError(effect)

    def check_chunk(self, chunk: StreamChunk) -> None:
        c = self.config
        assert chunk.stream_id == self.sender.stream_id
        assert len(chunk.items) <= c.max_chunk_items
        assert len(chunk.items) == 1 or sum(size_of(i) for i in chunk.items) <= c.max_chunk_bytes
        if chunk.seq > self.sent_max.get(chunk.session, -1):
            self.sent_max[chunk.session] = chunk.seq
            self.stats.chunks.append(chunk)
        acked = self.acked_max.get(chunk.session, -1)
        # Seen from outside: new chunks never run more than a window past what the sender heard acked,
        # and only seq 0 goes out before seq 0 is acknowledged.
        assert self.sent_max[chunk.session] - acked <= (c.window if acked >= 0 else 1)

    def handle_receiver(self, effects: Sequence[object]) -> None:
        window = self.config.receiver_window or self.config.window
        assert self.receiver.buffered < window
        self.stats.max_buffered = max(self.stats.max_buffered, self.receiver.buffered)
        for effect in effects:
            if isinstance(effect, SendMessage):
                self.send("sender", effect.message)
            elif isinstance(effect, Installed):
                self.stats.installs += 1
                self.installed_identity = (effect.stream_id, effect.session)
            else:
                raise AssertionError(effect)

    def deliver(self, dst: str, message: StreamMessage) -> None:
        if dst == "receiver":
            assert isinstance(message, StreamChunk)
            self.handle_receiver(self.receiver.receive(message))
        else:
            if isinstance(message, StreamAck):
                self.acked_max[message.session] = max(self.acked_max.get(message.session, -1), message.seq)
            elif isinstance(message, StreamDone):
                self.acked_max[message.session] = self.sent_max.get(message.session, -1)
            self.handle_sender(self.sender.receive(self.now, message))

    # ------------------------------------------------------------ the owner

    def write(self, key: str, value: str | None) -> None:
        assert not self.fenced
        if value is None:
            self.source.pop(key, None)
        else:
            self.source[key] = value
        self.handle_sender(self.sender.changed(self.now, key))

    def fence_and_finish(self) -> None:
        self.fenced = True
        self.final_source = dict(self.source)
        self.handle_sender(self.sender.finish(self.now))

    def crash_receiver(self) -> None:
        """The receiving node restarts: a new receiver with no state; the partial copy stays on disk."""
        self.receiver = self.new_receiver()

    def restart_sender(self, new_stream_id: bool) -> None:
        """The sending node restarts: a new sender (and the fence, which was in memory, is gone). Messages
        of the old one are still in flight."""
        if new_stream_id:
            self.stream_id += 1
        self.fenced = False
        self.final_source = None
        self.sender = self.new_sender(self.stream_id)
        self.handle_sender(self.sender.start(self.now))

    def step(self) -> bool:
        """Run the earliest event (a delivery or a retry tick); False if there is none."""
        deadline = self.sender.next_deadline_ms()
        if self.net and (deadline is None or self.net[0][0] <= deadline):
            at, _, dst, message = heapq.heappop(self.net)
            self.now = max(self.now, at)
            self.deliver(dst, message)
            return True
        if deadline is not None:
            self.now = max(self.now, deadline)
            self.handle_sender(self.sender.tick(self.now))
            return True
        return False

    def run(
        self,
        writes: Sequence[tuple[str, str | None]] = (),
        *,
        write_chance: float = 0.3,
        events: Callable[[Harness, int], None] | None = None,
        max_steps: int = 200_000,
    ) -> Complete | Failed:
        """Deliver, tick and interleave ``writes`` until the sender reports an outcome. The owner fences as
        soon as the sender is ready and every write is in; ``events(h, step)`` may crash things."""
        todo = list(writes)
        for n in range(max_steps):
            if self.outcome is not None:
                return self.outcome
            if events is not None:
                events(self, n)
            if todo and not self.fenced and (self.rng.random() < write_chance or not (self.net or self.sender.unacked)):
                self.now += 1
                self.write(*todo.pop(0))
                continue
            if not todo and not self.fenced and self.sender.ready_to_fence():
                self.fence_and_finish()
                continue
            if not self.step():
                raise AssertionError(f"stuck at {self.now} ms: nothing in flight and no outcome")
        raise AssertionError("no outcome within max_steps")

    def assert_converged(self) -> None:
        assert isinstance(self.outcome, Complete), self.outcome
        assert self.final_source is not None
        assert self.stats.installs >= 1  # (the receiver object may have restarted since: the copy is on "disk")
        assert self.dest == self.final_source


def dataset(n: int, value_len: int = 3, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"k{i:05d}": "".join(rng.choice("abcdef") for _ in range(value_len)) for i in range(n)}


LATE_MS = 1000
LOSSY = Faults(drop=0.2, duplicate=0.2, max_delay_ms=40, late=0.05)


# ---------------------------------------------------------------- whole transfers


@pytest.mark.parametrize("n", [0, 1, 2, 5, 6, 300])
@pytest.mark.parametrize("faults", [Faults(), LOSSY], ids=["clean", "lossy"])
def test_copy_equals_source(n: int, faults: Faults) -> None:
    h = Harness(dataset(n), seed=n, faults=faults)
    h.run()
    h.assert_converged()
    assert h.stats.clears == 1


def test_clean_transfer_chunks_exactly() -> None:
    # 12 items of 9 bytes: 5 per chunk by count (45 <= 60), so 5 + 5 + 2, then an empty last chunk.
    h = Harness(dataset(12, value_len=3))
    h.run()
    h.assert_converged()
    assert [(c.seq, c.phase, len(c.items), c.last) for c in h.stats.chunks] == [
        (0, "snapshot", 5, False),
        (1, "snapshot", 5, False),
        (2, "snapshot", 2, False),
        (3, "final", 0, True),
    ]
    assert h.stats.applied_phases == ["snapshot", "snapshot", "snapshot", "final"]


def test_empty_partition_is_one_empty_last_chunk() -> None:
    h = Harness({})
    assert h.sender.ready_to_fence()
    assert h.sender.unacked == 0
    h.run()
    h.assert_converged()
    assert [(c.seq, c.phase, c.items, c.last) for c in h.stats.chunks] == [(0, "final", (), True)]


def test_items_larger_than_a_chunk_travel_one_per_chunk() -> None:
    data = {f"big{i}": "x" * (100 + i) for i in range(7)}  # every item > max_chunk_bytes = 60
    data["small"] = "y"
    h = Harness(data, faults=LOSSY, seed=3)
    h.run()
    h.assert_converged()
    assert all(len(c.items) == 1 for c in h.stats.chunks if c.phase == "snapshot")
    assert sum(len(c.items) for c in h.stats.chunks) == 8


def test_byte_bound_cuts_chunks() -> None:
    # 8 items of 4 + 20 = 24 bytes: two fit in 60, a third would not.
    data = {f"k{i:03d}": "v" * 20 for i in range(8)}
    h = Harness(data)
    h.run()
    h.assert_converged()
    assert [len(c.items) for c in h.stats.chunks] == [2, 2, 2, 2, 0]


# ---------------------------------------------------------------- writes during the stream


def test_writes_before_and_after_the_cursor_all_arrive() -> None:
    data = dataset(20)
    h = Harness(data, config=Config(fence_threshold=0, max_delta_rounds=10))
    # Only the first snapshot chunk (k00000..k00004) is out, until it is acknowledged: the cursor is at k00004.
    assert h.sender.unacked == 1
    assert h.sender._cursor == "k00004"
    h.write("k00002", "updated")  # before the cursor: must be sent again
    h.write("k00003", None)  # deleted before the cursor
    h.write("k00001", None)  # deleted, then re-created
    h.write("k00001", "again")
    h.write("k00015", "later")  # after the cursor: the snapshot will read it
    h.write("k00016", None)  # deleted after the cursor: never sent
    h.write("a-first", "new")  # a new key before the cursor
    h.write("z-last", "new")  # a new key after it
    assert h.sender._dirty == {"k00001", "k00002", "k00003", "a-first"}
    h.run()
    h.assert_converged()
    assert h.dest["k00002"] == "updated"
    assert "k00003" not in h.dest and "k00016" not in h.dest
    assert h.dest["k00001"] == "again" and h.dest["k00015"] == "later"
    assert h.dest["a-first"] == "new" and h.dest["z-last"] == "new"
    # Keys written after the cursor were not sent twice: each snapshot key went once.
    snapshot_keys = [k for c in h.stats.chunks if c.phase == "snapshot" for k, _ in c.items]
    assert len(snapshot_keys) == len(set(snapshot_keys))
    resent = {k for c in h.stats.chunks if c.phase != "snapshot" for k, _ in c.items}
    assert resent == {"k00001", "k00002", "k00003", "a-first"}


def test_delta_rounds_then_fence() -> None:
    h = Harness(dataset(10), config=Config(fence_threshold=1, max_delta_rounds=2))
    while h.sender.phase != "delta" or h.sender.unacked:
        assert h.step()

    # Read afresh through calls: mypy would narrow the attributes between asserts.
    def rounds() -> int:
        return h.sender.delta_rounds

    def unacked() -> int:
        return h.sender.unacked

    assert rounds() == 0 and h.sender.ready_to_fence()  # nothing dirty
    # Idle: the first write goes out at once as round 1; the next ones wait for its acknowledgement.
    h.write("k00000", "d1")
    assert rounds() == 1 and unacked() == 1
    h.write("k00005", "d1")
    h.write("k00009", None)
    assert h.sender.backlog == 2 and not h.sender.ready_to_fence()  # 2 > threshold 1, 1 round < 2
    while h.sender.unacked:
        assert h.step()
    assert rounds() == 2 and h.sender.backlog == 0
    h.write("k00003", "d2")  # round 3
    h.write("k00004", "d2")
    h.write("k00006", "d2")
    assert h.sender.backlog == 2 and h.sender.ready_to_fence()  # max_delta_rounds reached
    h.fence_and_finish()
    h.run()
    h.assert_converged()
    assert h.dest["k00004"] == "d2" and "k00009" not in h.dest
    assert [(c.phase, [k for k, _ in c.items], c.last) for c in h.stats.chunks[-4:]] == [
        ("delta", ["k00000"], False),
        ("delta", ["k00005", "k00009"], False),
        ("delta", ["k00003"], False),
        ("final", ["k00004", "k00006"], True),
    ]


def test_continuous_writes_over_a_lossy_network() -> None:
    rng = random.Random(5)
    keys = [f"k{i:05d}" for i in range(0, 400, 3)] + ["aa", "zz"]
    writes = [(rng.choice(keys), None if rng.random() < 0.3 else f"w{i}") for i in range(400)]
    h = Harness(dataset(300), seed=5, faults=LOSSY)
    h.run(writes, write_chance=0.5)
    h.assert_converged()


def test_write_after_the_last_chunk_fails_the_stream() -> None:
    h = Harness(dataset(3))
    while not h.sender.ready_to_fence():
        assert h.step()
    h.fence_and_finish()
    while h.sender._last_seq is None:
        assert h.step()
    h.fenced = False  # the owner's fence leaked
    h.write("k00001", "leaked")
    assert isinstance(h.outcome, Failed)
    assert "fence leaked" in h.outcome.reason
    assert h.sender.next_deadline_ms() is None
    assert h.sender.tick(h.now + 10_000) == []


# ---------------------------------------------------------------- crashes


def test_receiver_crash_mid_stream_restarts_and_converges() -> None:
    h = Harness(dataset(100), seed=2, faults=LOSSY)
    first_session = h.sender.session

    crashed: list[int] = []

    def crash(h: Harness, step: int) -> None:
        if not crashed and h.receiver.applied_through >= 8:  # mid-stream
            crashed.append(h.now)
            h.crash_receiver()

    h.run(events=crash)
    h.assert_converged()
    assert crashed
    assert h.sender.restarts >= 1
    assert h.sender.session != first_session
    assert h.stats.clears >= 2  # the first start and the restarted one


def test_sender_restart_same_stream_id_clears_and_converges() -> None:
    rng = random.Random(9)
    writes = [(f"k{rng.randrange(150):05d}", f"w{i}") for i in range(60)]

    restarted: list[int] = []

    def restart(h: Harness, step: int) -> None:
        if not restarted and h.receiver.applied_through >= 10:
            restarted.append(h.sender.session)
            h.restart_sender(new_stream_id=False)

    h = Harness(dataset(150), seed=4, faults=LOSSY)
    h.run(writes, events=restart)
    h.assert_converged()
    assert restarted and h.sender.session != restarted[0] and h.sender.stream_id == 7
    assert h.stats.clears >= 2


def test_sender_restart_new_stream_id_converges() -> None:
    def restart(h: Harness, step: int) -> None:
        if step in (40, 90):
            h.restart_sender(new_stream_id=True)

    h = Harness(dataset(150), seed=6, faults=LOSSY)
    h.run(events=restart)
    h.assert_converged()
    assert h.receiver.stream_id == 9


def test_receiver_restarted_then_a_late_seq_0_restarts_instead_of_waiting() -> None:
    h = Harness(dataset(40), config=Config(max_retries=3))
    while h.sender._acked < 2:
        assert h.step()
    stale_start = h.stats.chunks[0]
    h.crash_receiver()
    # The late copy of seq 0 makes the new receiver adopt the session again, and clear what is on disk.
    assert sent(h.receiver.receive(stale_start)) == [StreamAck(7, stale_start.session, 0)]
    assert h.receiver.applied_through == 0
    # Chunks 1 and 2 were acknowledged by the previous life and will never come again: the next chunk
    # says so (acked >= 1) and the receiver asks for a restart rather than waiting until retries run out.
    h.run()
    h.assert_converged()
    assert h.sender.restarts == 1


def test_resends_carry_the_current_acknowledgement() -> None:
    # The same case when the sender has no new chunk to send, only resends: they must say what it holds
    # acknowledged now, not when the chunk was first made.
    h = Harness(dataset(12), config=Config(max_retries=3))

    def take() -> list[StreamMessage]:
        messages = [message for _, _, _, message in sorted(h.net)]
        h.net.clear()
        return messages

    (start,) = take()
    h.deliver("receiver", start)
    h.deliver("sender", *take())  # ack 0: chunks 1 and 2 (the snapshot's end) go out, made with acked 0
    one, two = take()
    assert isinstance(two, StreamChunk) and (two.seq, two.acked) == (2, 0)
    h.deliver("receiver", one)  # two is lost
    h.deliver("sender", *take())  # ack 1
    assert h.sender.unacked == 1 and h.sender.ready_to_fence()  # the owner does not fence yet
    h.crash_receiver()
    h.deliver("receiver", start)  # a late copy of seq 0
    take()
    while h.sender.restarts == 0:
        assert h.step() and h.outcome is None
    h.run()
    h.assert_converged()


def test_receiver_crash_after_install_before_done_arrives() -> None:
    # Every StreamDone is lost until the receiver restarts; the sender's retry of the last chunk then
    # meets the restarted receiver, built with the identity of the copy it installed.
    h = Harness(dataset(8))
    drop_done = True
    original_send = h.send

    def send(dst: str, message: StreamMessage) -> None:
        if drop_done and isinstance(message, StreamDone):
            return
        original_send(dst, message)

    h.send = send  # type: ignore[method-assign]
    while h.stats.installs == 0:
        if not h.fenced and h.sender.ready_to_fence():
            h.fence_and_finish()
        assert h.step()
    h.crash_receiver()
    drop_done = False
    h.run()
    h.assert_converged()
    # The restarted receiver knows the copy it installed (the owner kept its identity with it) and
    # answers the sender's retry with StreamDone: nothing is copied again.
    assert h.sender.restarts == 0
    assert h.stats.installs == 1


# ---------------------------------------------------------------- bounds and retries


def test_window_is_never_exceeded_and_is_used() -> None:
    h = Harness(dataset(200), seed=8, config=Config(window=3), faults=Faults(max_delay_ms=30))
    h.run()
    h.assert_converged()
    assert h.stats.max_unacked_seen == 3


def test_reordering_is_buffered_within_the_window() -> None:
    h = Harness(dataset(300), seed=10, config=Config(window=6), faults=Faults(max_delay_ms=60, duplicate=0.3))
    h.run()
    h.assert_converged()
    assert 1 <= h.stats.max_buffered <= 5


def test_retries_exhausted_fails_at_an_exact_time() -> None:
    h = Harness(dataset(10), config=Config(retry_ms=100, max_retries=4), faults=Faults(drop=1.0))
    h.run()
    assert isinstance(h.outcome, Failed)
    assert "chunk 0 not acknowledged after 4 resends" in h.outcome.reason
    # Sent at 0, resent at 100, 300 (waiting 200), 700 (400) and 1100 (400: the back-off stops at 4x), given up
    # at 1500.
    assert h.now == 1500
    assert h.sender.failed and h.sender.next_deadline_ms() is None
    assert h.dest == {}


def test_retries_count_per_chunk_not_per_stream() -> None:
    # Many chunks each lost a few times: progress never runs out of retries with max_retries = 6.
    h = Harness(dataset(200), seed=11, config=Config(max_retries=6), faults=Faults(drop=0.3, max_delay_ms=5))
    h.run()
    h.assert_converged()


def test_restarts_are_bounded() -> None:
    h = Harness(dataset(30), config=Config(max_restarts=2))

    def crash_often(h: Harness, step: int) -> None:
        if step % 7 == 6:
            h.crash_receiver()

    h.run(events=crash_often)
    assert isinstance(h.outcome, Failed)
    assert "start over more than 2 times" in h.outcome.reason
    assert h.sender.restarts == 2


def test_sender_window_wider_than_the_receivers_fails_visibly() -> None:
    h = Harness(
        dataset(200), config=Config(window=8, receiver_window=2, max_restarts=1), faults=Faults(max_delay_ms=20)
    )
    h.run()
    assert isinstance(h.outcome, Failed)


# ---------------------------------------------------------------- the receiver, message by message


def recording_receiver(window: int = 3) -> tuple[StreamReceiver, list[object]]:
    log: list[object] = []
    receiver = StreamReceiver(
        apply=lambda items, phase: log.append((phase, items)), clear=lambda: log.append("clear"), window=window
    )
    return receiver, log


def chunk(seq: int, *keys: str, session: int = 1, stream: int = 5, last: bool = False, acked: int = -1) -> StreamChunk:
    items = tuple((k, None) for k in keys)
    return StreamChunk(stream, session, seq, acked, "final" if last else "snapshot", items, last)


def sent(effects: Sequence[object]) -> list[object]:
    return [e.message if isinstance(e, SendMessage) else e for e in effects]


def test_receiver_applies_in_order_buffers_and_reacks() -> None:
    r, log = recording_receiver(window=3)
    assert r.stream_id is None
    assert sent(r.receive(chunk(0, "a"))) == [StreamAck(5, 1, 0)]
    assert log == ["clear", ("snapshot", (("a", None),))]
    assert sent(r.receive(chunk(2, "c"))) == []  # ahead of a gap: buffered
    assert r.buffered == 1
    assert sent(r.receive(chunk(2, "c"))) == []  # a duplicate of a buffered chunk
    assert r.buffered == 1
    assert sent(r.receive(chunk(4, "e"))) == [StreamRestart(5, 1)]  # 4 >= next (1) + window (3)
    assert sent(r.receive(chunk(3, "d"))) == []
    assert r.buffered == 2  # window - 1: the most a sender with the same window can have ahead
    assert sent(r.receive(chunk(0, "a"))) == [StreamAck(5, 1, 0)]  # duplicate: acknowledged again
    assert sent(r.receive(chunk(1, "b", acked=0))) == [StreamAck(5, 1, 3)]  # fills the gap: 1, 2, 3 applied
    assert r.buffered == 0 and r.applied_through == 3
    assert [entry[1][0][0] for entry in log[1:] if isinstance(entry, tuple)] == ["a", "b", "c", "d"]
    # A sender that holds chunk 4 acknowledged although we never applied it: we lost state, start over.
    assert sent(r.receive(chunk(5, "f", acked=4))) == [StreamRestart(5, 1)]
    assert sent(r.receive(chunk(4, last=True, acked=3))) == [Installed(5, 1), StreamDone(5, 1)]
    assert r.installed
    effects = r.receive(chunk(1, "b"))
    assert sent(effects) == [StreamDone(5, 1)]
    assert isinstance(effects[0], SendMessage) and effects[0].durable


def test_restarted_receiver_with_an_installed_copy_answers_done() -> None:
    # Regression (found by the property test): a retry of seq 0 still in flight reached the receiver
    # after it installed the copy and restarted; it cleared the copy while StreamDone was on its way.
    log: list[object] = []
    r2 = StreamReceiver(apply=lambda i, p: log.append(i), clear=lambda: log.append("clear"), installed=(5, 1))
    assert r2.installed and r2.stream_id == 5
    effects = r2.receive(chunk(0, "a", session=1))
    assert sent(effects) == [StreamDone(5, 1)] and isinstance(effects[0], SendMessage) and effects[0].durable
    assert log == []
    # Anything ordering before the installed session is a late copy: ignored, never cleared for.
    assert sent(r2.receive(chunk(0, "a", session=0))) == []
    assert sent(r2.receive(chunk(0, "a", stream=4, session=9))) == []
    assert log == []
    # A later attempt (the source restarted, so its fence is gone) still replaces it.
    assert sent(r2.receive(chunk(0, "a", stream=6, session=0))) == [StreamAck(6, 0, 0)]
    assert log[0] == "clear" and not r2.installed


def test_receiver_without_state_asks_for_restart() -> None:
    r, log = recording_receiver()
    assert sent(r.receive(chunk(4, "x", session=3))) == [StreamRestart(5, 3)]
    assert log == []


def test_receiver_new_session_clears_and_old_start_is_ignored() -> None:
    r, log = recording_receiver()
    r.receive(chunk(0, "a", session=1))
    r.receive(chunk(1, "b", session=1))
    assert sent(r.receive(chunk(0, "z", session=2))) == [StreamAck(5, 2, 0)]
    assert log.count("clear") == 2
    # Late copies of session 1, which orders before 2: ignored, whatever their seq.
    assert sent(r.receive(chunk(0, "a", session=1))) == []
    assert sent(r.receive(chunk(1, "b", session=1))) == []
    # A later attempt it never saw start: it must have lost state, so it asks for a restart.
    assert sent(r.receive(chunk(1, "b", session=3))) == [StreamRestart(5, 3)]
    assert log.count("clear") == 2
    assert sent(r.receive(chunk(1, "y", session=2))) == [StreamAck(5, 2, 1)]
    # A new stream id replaces the stream too (one receiver per partition).
    assert sent(r.receive(chunk(0, stream=6, session=2))) == [StreamAck(6, 2, 0)]
    assert r.stream_id == 6 and log.count("clear") == 3


def test_sender_ignores_answers_for_other_sessions_and_streams() -> None:
    data = dataset(20)
    h = Harness(data)
    s = h.sender
    assert s.unacked == 1  # the handshake: only seq 0 until it is acknowledged
    session = s.session
    assert s.receive(0, StreamRestart(s.stream_id, session + 1)) == []
    assert s.receive(0, StreamRestart(s.stream_id + 1, session)) == []
    assert s.receive(0, StreamDone(s.stream_id, session)) == []  # nothing marked last yet
    assert s.receive(0, StreamAck(s.stream_id, session, 5)) == []  # never sent
    assert s.receive(0, "garbage") == []
    assert s.session == session and s.restarts == 0 and s.unacked == 1
    effects = s.receive(0, StreamAck(s.stream_id, session, 0))
    assert [m.seq for m in sent(effects) if isinstance(m, StreamChunk)] == [1, 2, 3]  # window 4, 1 acked
    assert s.receive(0, StreamAck(s.stream_id, session, 0)) == []  # a duplicate ack


def test_tick_is_idempotent_before_the_deadline() -> None:
    h = Harness(dataset(3), config=Config(retry_ms=100))
    assert h.sender.next_deadline_ms() == 100
    assert h.sender.tick(99) == []
    assert sent(h.sender.tick(100)) == [h.stats.chunks[0]]
    assert h.sender.next_deadline_ms() == 300, "a resent chunk waits twice as long"
    assert h.sender.tick(299) == []


# ---------------------------------------------------------------- validation and the codec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"window": 5000}, "window"),
        ({"max_chunk_items": 0}, "max_chunk_items"),
        ({"max_chunk_bytes": 0}, "max_chunk_bytes"),
        ({"retry_ms": 0}, "retry_ms"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_restarts": True}, "max_restarts"),
        ({"fence_threshold": -1}, "fence_threshold"),
        ({"max_delta_rounds": 1.5}, "max_delta_rounds"),
        ({"read_page": None}, "read_page"),
        ({"rng": 3}, "rng"),
        ({"stream_id": 2**63}, "stream_id"),
    ],
)
def test_sender_arguments_are_validated(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "stream_id": 1,
        "read_page": lambda after, n, b: ([], True),
        "read_keys": lambda keys: [],
        "size_of": size_of,
        "rng": random.Random(1),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        StreamSender(**args)  # type: ignore[arg-type]


def test_receiver_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="window"):
        StreamReceiver(apply=lambda i, p: None, clear=lambda: None, window=0)
    with pytest.raises(ValueError, match="clear"):
        StreamReceiver(apply=lambda i, p: None, clear=None)  # type: ignore[arg-type]


def test_broken_readers_are_refused() -> None:
    def sender(read_page: object, read_keys: object = lambda keys: []) -> StreamSender:
        return StreamSender(1, read_page=read_page, read_keys=read_keys, size_of=size_of, rng=random.Random(1))  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="out of order"):
        sender(lambda after, n, b: ([("b", 1), ("a", 1)], True)).start(0)
    with pytest.raises(ValueError, match="no items"):
        sender(lambda after, n, b: ([], False)).start(0)
    with pytest.raises(ValueError, match="more than max_items"):
        sender(lambda after, n, b: ([(str(i), 1) for i in range(n + 1)], True)).start(0)
    s = sender(lambda after, n, b: ([("a", "1")], True), read_keys=lambda keys: [])
    s.start(0)
    s.receive(0, StreamAck(1, s.session, 0))
    with pytest.raises(ValueError, match="read_keys"):
        s.changed(1, "a")
    with pytest.raises(RuntimeError):
        s.start(0)


def test_messages_round_trip_through_the_codec() -> None:
    from kvstore import codec, messages
    from replication.replica import LogEntry

    assert messages.NODE_PARTITION == -1  # importing messages registers LogEntry
    codec.register_all(STREAM_MESSAGES)
    samples: list[object] = [
        StreamChunk(1, 2**62 - 1, 3, 2, "delta", (("a", LogEntry(1, 2, b"x")), ("b", None)), False),
        StreamChunk(-4, 0, 0, -1, "final", (), True),
        StreamAck(1, 2, 3),
        StreamRestart(1, 2),
        StreamDone(1, 2),
    ]
    for message in samples:
        assert codec.decode(codec.encode(message)) == message


# ---------------------------------------------------------------- property


keys_st = st.text(alphabet="abcde", min_size=1, max_size=3)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(keys_st, st.text(alphabet="xyz", max_size=12), max_size=40),
    writes=st.lists(st.tuples(keys_st, st.none() | st.text(alphabet="xyz", max_size=30)), max_size=40),
    seed=st.integers(0, 2**32),
    drop=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2]),
    max_delay_ms=st.sampled_from([1, 10, 80]),
    late=st.sampled_from([0.0, 0.05]),
    window=st.integers(1, 5),
    max_chunk_items=st.integers(1, 6),
    crash_receiver_after=st.none() | st.integers(0, 8),
    restart_sender_after=st.none() | st.integers(0, 8),
)
def test_property_copy_equals_source_at_finish(
    data: dict[str, str],
    writes: list[tuple[str, str | None]],
    seed: int,
    drop: float,
    duplicate: float,
    max_delay_ms: int,
    late: float,
    window: int,
    max_chunk_items: int,
    crash_receiver_after: int | None,
    restart_sender_after: int | None,
) -> None:
    config = Config(window=window, max_chunk_items=max_chunk_items, max_chunk_bytes=20, max_retries=60)
    h = Harness(data, seed=seed, config=config, faults=Faults(drop, duplicate, max_delay_ms, late))

    # Crash each end at most once, once the receiver has applied that many chunks.
    crashes: set[str] = set()

    def events(h: Harness, step: int) -> None:
        applied = h.receiver.applied_through
        if "receiver" not in crashes and crash_receiver_after is not None and applied >= crash_receiver_after:
            crashes.add("receiver")
            h.crash_receiver()
        if "sender" not in crashes and restart_sender_after is not None and applied >= restart_sender_after:
            crashes.add("sender")
            h.restart_sender(new_stream_id=seed % 2 == 0)

    h.run(writes, write_chance=0.4, events=events)
    h.assert_converged()
    event(f"crashed: {sorted(crashes)}")
    event(f"restarts: {min(h.sender.restarts, 2)}")
    event(f"delta rounds: {min(h.sender.delta_rounds, 3)}")
