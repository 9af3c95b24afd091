"""The pump's side of the durability contract, its flush schedule, bounds and failure handling.

Most tests drive it with driver_stub's node (each op's key names its effects: ``dur/``, ``free/``,
``send/``, ``sendfree/``, ``bulk/``), whose steps write to a stub storage (only the durability cursor)
and return durable and unmarked effects, and whose sync jobs block until the test opens their gate. A gated
job must run on the worker thread (``inline_sync_events=0``): one the loop ran itself would block the test.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from driver_stub import StubNode

from kvstore import flush_policy
from kvstore.config import FsyncPolicy, StorageConfig, local_cluster
from kvstore.effects import Effect, Reply
from kvstore.errors import ErrorCode
from kvstore.flush_policy import EARLY_FLUSH_EVENTS
from kvstore.messages import (
    Failure,
    Found,
    GetOp,
    Input,
    Message,
    PutOp,
    Result,
    Synced,
    Written,
)
from kvstore.node import Node
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.pump import Pump
from kvstore.storage.base import Record, SyncJob
from kvstore.storage.memory import MemoryStorage

POLICIES: tuple[FsyncPolicy, ...] = ("always", "batch", "never")
# Longer than any test: a sync that starts before it was not the periodic one.
LONG_INTERVAL_MS = 600_000
# Bounds on a hung pump, never a measure of speed.
HANG_S = 10.0


@dataclass
class GatedJournal:
    """Sync jobs block until ``gate`` opens; ``batches`` records how many writes each job carried."""

    gate: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)
    batches: list[int] = field(default_factory=list)
    # The thread each job ran on.
    threads: list[str] = field(default_factory=list)
    fail: bool = False

    def job(self, events: Sequence[object], up_to_lsn: int) -> SyncJob:
        return GatedJob(self, len(events), up_to_lsn)

    def close(self) -> None:
        pass


@dataclass
class GatedJob:
    journal: GatedJournal
    write_count: int
    up_to_lsn: int

    def run(self) -> None:
        self.journal.threads.append(threading.current_thread().name)
        self.journal.running.set()
        assert self.journal.gate.wait(timeout=30), "the test never opened the gate"
        if self.journal.fail:
            raise OSError("disk on fire")
        self.journal.batches.append(self.write_count)


class StubStorage:
    """The durability cursor and nothing else: a write takes the next LSN, a sync job covers them all."""

    def __init__(self, journal: GatedJournal) -> None:
        self.journal = journal
        self.written_lsn = 0
        self.synced_lsn = 0
        self._prepared_lsn = 0

    @property
    def written_log_lsn(self) -> int:
        return 0  # records only

    def write(self, partition: int, key: str, record: Record) -> None:
        self.written_lsn += 1

    def prepare_sync(self) -> SyncJob | None:
        if self._prepared_lsn == self.written_lsn:
            return None
        job = self.journal.job([None] * (self.written_lsn - self._prepared_lsn), self.written_lsn)
        self._prepared_lsn = self.written_lsn
        return job

    def complete_sync(self, job: SyncJob) -> None:
        self.synced_lsn = max(self.synced_lsn, job.up_to_lsn)


@dataclass
class Rig:
    pump: Pump
    node: StubNode
    storage: StubStorage
    journal: GatedJournal
    # (message, synced LSN when it left)
    sent: list[tuple[Message, int]]
    fatal: list[BaseException]

    def released_at(self, result: Reply | asyncio.Future[Reply]) -> list[int]:
        """The synced LSN at the moment a held answer is released (filled in when it is)."""
        assert isinstance(result, asyncio.Future), f"expected the answer to wait for a sync, got {result!r}"
        seen: list[int] = []
        result.add_done_callback(lambda _: seen.append(self.storage.synced_lsn))
        return seen


MakeRig = Callable[..., Rig]


@pytest.fixture
async def make_rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []
    # So that "at once" cannot be the periodic write-out of "never" either.
    monkeypatch.setattr(flush_policy, "NEVER_FLUSH_INTERVAL_MS", LONG_INTERVAL_MS)

    def make(
        fsync: FsyncPolicy = "always",
        max_inflight: int = 100,
        request_timeout_ms: int = 2000,
        batch_interval_ms: int = LONG_INTERVAL_MS,
        inline_sync_events: int = 0,
    ) -> Rig:
        journal = GatedJournal()
        storage = StubStorage(journal)
        node = StubNode("n1", storage)
        sent: list[tuple[Message, int]] = []
        fatal: list[BaseException] = []
        pump = Pump(
            node,
            storage,
            NodeClock("n1", FaultSwitch()),
            lambda msg: sent.append((msg, storage.synced_lsn)),
            fsync=fsync,
            batch_interval_ms=batch_interval_ms,
            max_inflight=max_inflight,
            request_timeout_ms=request_timeout_ms,
            on_fatal=fatal.append,
            inline_sync_events=inline_sync_events,
        )
        pump.start()
        rig = Rig(pump, node, storage, journal, sent, fatal)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.journal.gate.set()
        await rig.pump.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_S):
        while not condition():
            await asyncio.sleep(0.001)


async def sync_started(rig: Rig) -> None:
    assert await asyncio.to_thread(rig.journal.running.wait, HANG_S), "no sync started"


async def resolved(reply: Reply | asyncio.Future[Reply]) -> Result:
    assert isinstance(reply, asyncio.Future), f"expected the answer to wait for a sync, got {reply!r}"
    return (await asyncio.wait_for(reply, HANG_S)).result


def at_once(reply: Reply | asyncio.Future[Reply]) -> Result:
    assert isinstance(reply, Reply), f"expected an answer at once, got {reply!r}"
    return reply.result


# ---------------------------------------------------------------- the durability contract


@pytest.mark.parametrize("fsync", POLICIES)
async def test_a_durable_reply_waits_for_the_sync_of_its_step_which_starts_at_once(
    make_rig: MakeRig, fsync: FsyncPolicy
) -> None:
    rig = make_rig(fsync)
    pending = rig.pump.submit(PutOp("dur/a", b""))
    released = rig.released_at(pending)
    await sync_started(rig)  # not the periodic one: the intervals are longer than the test
    await asyncio.sleep(0.01)
    assert not pending.done()  # type: ignore[union-attr]
    rig.journal.gate.set()
    assert await resolved(pending) == Written("dur/a", 1)
    assert released == [1]


@pytest.mark.parametrize("fsync", POLICIES)
async def test_unmarked_effects_leave_at_once_with_writes_pending(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    assert at_once(rig.pump.submit(PutOp("free/a", b""))) == Written("free/a", 1)
    assert at_once(rig.pump.submit(PutOp("sendfree/n2/b", b""))) == Written("sendfree/n2/b", 1)
    assert rig.sent == [(Message("n1", "n2", 0, GetOp("b")), 0)]
    assert rig.storage.synced_lsn == 0


@pytest.mark.parametrize("fsync", POLICIES)
async def test_a_durable_send_leaves_only_after_its_sync(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    assert at_once(rig.pump.submit(PutOp("send/n2/a", b""))) == Written("send/n2/a", 1)  # the reply is unmarked
    await sync_started(rig)
    assert rig.sent == [] and rig.pump.held_effects == 1
    rig.journal.gate.set()
    await wait_until(lambda: bool(rig.sent))
    assert rig.sent == [(Message("n1", "n2", 0, GetOp("a")), 1)]


@pytest.mark.parametrize("fsync", POLICIES)
async def test_a_read_waits_for_unsynced_writes_and_not_once_they_are_synced(
    make_rig: MakeRig, fsync: FsyncPolicy
) -> None:
    rig = make_rig(fsync)
    rig.pump.submit(PutOp("free/a", b""))
    read = rig.pump.submit(GetOp("a"))
    released = rig.released_at(read)
    rig.journal.gate.set()
    assert isinstance(await resolved(read), Found)
    assert released == [1]
    assert isinstance(at_once(rig.pump.submit(GetOp("a"))), Found)  # nothing unsynced: at once


@pytest.mark.parametrize("fsync", POLICIES)
async def test_one_sync_covers_every_step_before_it(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    first = rig.pump.submit(PutOp("dur/k0", b""))
    await sync_started(rig)
    # While the first sync runs, ten more durable writes and a read: all wait.
    rest = [rig.pump.submit(PutOp(f"dur/k{i}", b"")) for i in range(1, 11)]
    read = rig.pump.submit(GetOp("k0"))
    releases = [rig.released_at(r) for r in rest]
    assert rig.pump.held_effects == 12
    rig.journal.gate.set()
    assert await resolved(first) == Written("dur/k0", 1)
    assert [await resolved(r) for r in rest] == [Written(f"dur/k{i}", i + 1) for i in range(1, 11)]
    assert isinstance(await resolved(read), Found)
    assert releases == [[11]] * 10
    # One sync for the first write, one for the ten that queued behind it.
    assert rig.journal.batches == [1, 10]


@pytest.mark.parametrize("fsync", POLICIES)
async def test_the_node_is_stepped_synced_after_every_sync(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    rig.journal.gate.set()
    await resolved(rig.pump.submit(PutOp("dur/a", b"")))
    await resolved(rig.pump.submit(PutOp("dur/b", b"")))
    await wait_until(lambda: len(rig.node.synced()) == 2)
    assert rig.node.synced() == [Synced(1), Synced(2)]
    # Stepped once the sync was complete, never before.
    assert [stepped.synced_lsn for stepped in rig.node.received(Synced)] == [1, 2]


# ---------------------------------------------------------------- the flush schedule


async def test_always_syncs_a_write_nothing_waits_for(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    rig.journal.gate.set()
    rig.pump.submit(PutOp("free/a", b""))
    await wait_until(lambda: rig.storage.synced_lsn == 1)


async def test_batch_syncs_every_interval_with_nothing_waiting(make_rig: MakeRig) -> None:
    rig = make_rig("batch", batch_interval_ms=5)
    rig.journal.gate.set()
    assert at_once(rig.pump.submit(PutOp("free/a", b""))) == Written("free/a", 1)
    await wait_until(lambda: rig.storage.synced_lsn == 1)
    assert rig.journal.batches == [1]


@pytest.mark.parametrize("fsync", ["batch", "never"])
async def test_early_flush_bounds_what_is_held_unsynced(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    rig.pump.submit(PutOp(f"bulk/{EARLY_FLUSH_EVENTS - 1}", b""))
    await asyncio.sleep(0.05)
    assert not rig.journal.running.is_set()  # under the bound: waits for the (long) interval
    rig.pump.submit(PutOp("bulk/1", b""))
    await sync_started(rig)
    rig.journal.gate.set()
    await wait_until(lambda: rig.storage.synced_lsn == EARLY_FLUSH_EVENTS)


async def test_a_small_sync_runs_on_the_loop_thread_and_a_large_one_on_the_worker(make_rig: MakeRig) -> None:
    rig = make_rig("always", inline_sync_events=4)
    rig.journal.gate.set()
    loop_thread = threading.current_thread().name
    assert await rig.pump.execute(PutOp("dur/a", b"")) == Written("dur/a", 1)
    assert rig.journal.threads == [loop_thread]
    await rig.pump.execute(PutOp("bulk/5", b""))
    await wait_until(lambda: rig.storage.synced_lsn == 6)
    assert rig.journal.batches == [1, 5]
    assert rig.journal.threads[1] != loop_thread and rig.journal.threads[1].startswith("sync-n1")


async def test_an_inline_sync_lets_ready_work_go_first_and_share_it(make_rig: MakeRig) -> None:
    # Two writes stepped in the same loop turn as the one that woke the flusher share its commit.
    rig = make_rig("always", inline_sync_events=64)
    rig.journal.gate.set()
    first = rig.pump.submit(PutOp("dur/a", b""))
    asyncio.get_running_loop().call_soon(rig.pump.submit, PutOp("dur/b", b""))
    assert isinstance(first, asyncio.Future)
    await first
    assert rig.journal.batches == [2]


def test_the_schedule_of_each_policy() -> None:
    assert flush_policy.FlushSchedule.of("always", 10) == flush_policy.FlushSchedule(None, fsync=True)
    assert flush_policy.FlushSchedule.of("batch", 10) == flush_policy.FlushSchedule(10, fsync=True)
    assert flush_policy.FlushSchedule.of("never", 10) == flush_policy.FlushSchedule(1000, fsync=False)
    never = flush_policy.FlushSchedule.of("never", 10)
    assert not never.sync_now(0, durable_waiting=True)
    assert never.sync_now(1, durable_waiting=True)
    assert not never.sync_now(EARLY_FLUSH_EVENTS - 1, durable_waiting=False)
    assert never.sync_now(EARLY_FLUSH_EVENTS, durable_waiting=False)


def test_leader_mode_syncs_at_once_under_always_only_for_what_the_log_cannot_rebuild() -> None:
    always = flush_policy.FlushSchedule.of("always", 10, records_from_log=True)
    assert always.sync_now(1, durable_waiting=False, log_pending=True)  # a log entry, a vote, metadata
    assert not always.sync_now(3, durable_waiting=False, log_pending=False)  # records an apply wrote
    assert always.sync_now(3, durable_waiting=True, log_pending=False)  # unless a durable effect waits on them
    assert always.sync_now(EARLY_FLUSH_EVENTS, durable_waiting=False, log_pending=False)  # bounded
    single = flush_policy.FlushSchedule.of("always", 10)
    assert single.sync_now(1, durable_waiting=False, log_pending=False)  # single mode: records are the data


# ---------------------------------------------------------------- bounds and failures


async def test_waiting_requests_are_bounded(make_rig: MakeRig) -> None:
    rig = make_rig("always", max_inflight=2)
    futures = [rig.pump.submit(PutOp(f"dur/o{i}", b"")) for i in range(2)]
    refused = at_once(rig.pump.submit(PutOp("dur/o9", b"")))
    assert isinstance(refused, Failure)
    assert refused.error_code is ErrorCode.OVERLOADED
    rig.journal.gate.set()
    for future in futures:
        assert isinstance(await resolved(future), Written)


async def test_a_sync_that_never_finishes_times_out_as_indefinite(make_rig: MakeRig) -> None:
    rig = make_rig("always", request_timeout_ms=20)
    result = await resolved(rig.pump.submit(PutOp("dur/t", b"")))
    assert isinstance(result, Failure)
    assert result.error_code is ErrorCode.TIMEOUT
    assert not result.error_code.definite


@pytest.mark.parametrize("fsync", POLICIES)
async def test_a_failed_sync_is_fatal_and_never_reported_as_success(make_rig: MakeRig, fsync: FsyncPolicy) -> None:
    rig = make_rig(fsync)
    rig.journal.fail = True
    pending = rig.pump.submit(PutOp("dur/f", b""))
    rig.pump.submit(PutOp("send/n2/g", b""))
    rig.journal.gate.set()
    result = await resolved(pending)
    assert isinstance(result, Failure)
    assert result.error_code is ErrorCode.INTERNAL
    assert [str(e) for e in rig.fatal] == ["disk on fire"]
    assert rig.sent == [] and rig.node.synced() == []
    later = at_once(rig.pump.submit(GetOp("anything")))
    assert isinstance(later, Failure)
    assert later.error_code is ErrorCode.INTERNAL


async def test_a_node_that_fails_on_synced_stops_the_pump(make_rig: MakeRig) -> None:
    rig = make_rig("batch")
    step = rig.node.step

    def broken(now_ms: int, inp: Input) -> list[Effect]:
        if isinstance(inp, Synced):
            raise AssertionError("broken invariant")
        return step(now_ms, inp)

    rig.node.step = broken  # type: ignore[method-assign]
    waiting = at_once(rig.pump.submit(PutOp("send/n2/a", b"")))  # answered at once; its send waits
    assert waiting == Written("send/n2/a", 1)
    held = rig.pump.submit(GetOp("a"))
    rig.journal.gate.set()
    assert isinstance(await resolved(held), Found)  # released by the sync, before the node failed
    await wait_until(lambda: bool(rig.fatal))
    later = at_once(rig.pump.submit(GetOp("a")))
    assert isinstance(later, Failure) and later.error_code is ErrorCode.INTERNAL
    assert "Synced" in later.message


async def test_close_syncs_and_answers_what_is_held(make_rig: MakeRig) -> None:
    rig = make_rig("never")
    pending = rig.pump.submit(PutOp("dur/c", b""))
    rig.pump.submit(PutOp("free/d", b""))
    rig.journal.gate.set()
    await rig.pump.close()
    assert await resolved(pending) == Written("dur/c", 1)
    assert rig.storage.synced_lsn == 2
    refused = at_once(rig.pump.submit(GetOp("c")))
    assert isinstance(refused, Failure)
    assert refused.error_code is ErrorCode.UNAVAILABLE


# ---------------------------------------------------------------- with the real node


@pytest.mark.parametrize("fsync", POLICIES)
async def test_the_node_answers_a_put_after_its_sync_only_under_always(fsync: FsyncPolicy) -> None:
    config = local_cluster(1, partitions=4, storage=StorageConfig(engine="memory", fsync=fsync))
    journal = GatedJournal()
    storage = MemoryStorage(journal)
    node = Node("n1", config, storage, random.Random(7))
    pump = Pump(node, storage, NodeClock("n1", FaultSwitch()), lambda _: None, fsync=fsync,
                batch_interval_ms=LONG_INTERVAL_MS, max_inflight=10, request_timeout_ms=2000,
                inline_sync_events=0)
    pump.start()
    try:
        reply = pump.submit(PutOp("k", b"v"))
        if fsync == "always":
            assert isinstance(reply, asyncio.Future) and not reply.done()
            journal.gate.set()
            result = await resolved(reply)
        else:
            result = at_once(reply)
        assert isinstance(result, Written)
    finally:
        journal.gate.set()
        await pump.close()
