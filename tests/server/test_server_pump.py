"""The pump's durability contract, group commit, bounds and failure handling, with a journal the test gates."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from kvstore.config import FsyncPolicy, local_cluster
from kvstore.errors import ErrorCode
from kvstore.messages import Failure, Forward, ForwardReply, GetOp, Message, PutOp, Result, Written
from kvstore.node import Node
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.pump import Pump
from kvstore.storage.base import SyncJob
from kvstore.storage.memory import Event, MemoryStorage


@dataclass
class GatedJournal:
    """Sync jobs block until ``gate`` opens; ``batches`` records how many events each job carried."""

    gate: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)
    batches: list[int] = field(default_factory=list)
    fail: bool = False

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob:
        return GatedJob(self, len(events), up_to_lsn)

    def close(self) -> None:
        pass


@dataclass
class GatedJob:
    journal: GatedJournal
    event_count: int
    up_to_lsn: int

    def run(self) -> None:
        self.journal.running.set()
        assert self.journal.gate.wait(timeout=30), "the test never opened the gate"
        if self.journal.fail:
            raise OSError("disk on fire")
        self.journal.batches.append(self.event_count)


@dataclass
class Rig:
    pump: Pump
    node: Node
    storage: MemoryStorage
    journal: GatedJournal
    sent: list[Message]
    fatal: list[BaseException]


MakeRig = Callable[..., Rig]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    def make(fsync: FsyncPolicy = "always", max_inflight: int = 100, request_timeout_ms: int = 2000) -> Rig:
        config = local_cluster(2, partitions=4)
        journal = GatedJournal()
        storage = MemoryStorage(journal)
        node = Node("n1", config, storage, random.Random(7))
        sent: list[Message] = []
        fatal: list[BaseException] = []
        pump = Pump(
            node,
            storage,
            NodeClock("n1", FaultSwitch()),
            sent.append,
            fsync=fsync,
            batch_interval_ms=5,
            max_inflight=max_inflight,
            request_timeout_ms=request_timeout_ms,
            on_fatal=fatal.append,
        )
        pump.start()
        rig = Rig(pump, node, storage, journal, sent, fatal)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.journal.gate.set()
        await rig.pump.close()


def local_key(node: Node, stem: str) -> str:
    return next(
        f"{stem}{i}" for i in range(1000) if node.partition_map.partition_for_key(f"{stem}{i}") in node.replicas
    )


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def resolved(result: Result | asyncio.Future[Result]) -> Result:
    assert isinstance(result, asyncio.Future), "expected the answer to wait for a sync"
    return await result


async def test_always_holds_replies_until_synced_and_groups_commits(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    keys = [local_key(rig.node, f"k{i}-") for i in range(11)]
    first = rig.pump.submit(PutOp(keys[0], b"v"))
    assert isinstance(first, asyncio.Future)
    await asyncio.to_thread(rig.journal.running.wait)
    # While the first sync runs, ten more writes and a read arrive: all wait, none is answered yet.
    rest = [rig.pump.submit(PutOp(k, b"v")) for k in keys[1:]]
    read = rig.pump.submit(GetOp(keys[0]))
    assert not first.done()
    assert rig.pump.held_effects == 12
    rig.journal.gate.set()
    assert await first == Written(keys[0], 1)
    assert [await resolved(r) for r in rest] == [Written(k, i + 2) for i, k in enumerate(keys[1:])]
    assert (await resolved(read)).value == b"v"  # type: ignore[union-attr]
    # One fsync for the first write, one for the ten that queued behind it.
    assert rig.journal.batches == [1, 10]
    assert rig.storage.synced_lsn == 11


async def test_always_answers_at_once_when_nothing_is_unsynced(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    result = rig.pump.submit(GetOp(local_key(rig.node, "absent")))
    assert isinstance(result, Failure)
    assert result.error_code is ErrorCode.NOT_FOUND


async def test_always_holds_peer_sends_too(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    key = local_key(rig.node, "fwd")
    forward = Forward(
        incarnation=5, forward_id=1, target_incarnation=rig.node.incarnation, op=PutOp(key, b"from n2")
    )
    rig.pump.deliver(Message("n2", "n1", rig.node.partition_map.partition_for_key(key), forward))
    assert rig.sent == []
    rig.journal.gate.set()
    await wait_until(lambda: bool(rig.sent))
    [reply] = rig.sent
    assert isinstance(reply.body, ForwardReply)
    assert reply.body.result == Written(key, 1)


@pytest.mark.parametrize("fsync", ["batch", "never"])
async def test_batch_and_never_answer_at_once_and_sync_in_the_background(
    make_rig: MakeRig, fsync: FsyncPolicy
) -> None:
    rig = make_rig(fsync)
    rig.journal.gate.set()
    key = local_key(rig.node, "b")
    assert rig.pump.submit(PutOp(key, b"v")) == Written(key, 1)
    await wait_until(lambda: rig.storage.synced_lsn == 1)
    assert rig.journal.batches == [1]


async def test_waiting_requests_are_bounded(make_rig: MakeRig) -> None:
    rig = make_rig("always", max_inflight=2)
    futures = [rig.pump.submit(PutOp(local_key(rig.node, f"o{i}-"), b"v")) for i in range(2)]
    refused = rig.pump.submit(PutOp(local_key(rig.node, "o9-"), b"v"))
    assert isinstance(refused, Failure)
    assert refused.error_code is ErrorCode.OVERLOADED
    rig.journal.gate.set()
    for future in futures:
        assert isinstance(await resolved(future), Written)


async def test_a_sync_that_never_finishes_times_out_as_indefinite(make_rig: MakeRig) -> None:
    rig = make_rig("always", request_timeout_ms=20)
    result = await resolved(rig.pump.submit(PutOp(local_key(rig.node, "t"), b"v")))
    assert isinstance(result, Failure)
    assert result.error_code is ErrorCode.TIMEOUT
    assert not result.error_code.definite


async def test_a_failed_sync_is_fatal_and_never_reported_as_success(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    rig.journal.fail = True
    pending = rig.pump.submit(PutOp(local_key(rig.node, "f"), b"v"))
    rig.journal.gate.set()
    result = await resolved(pending)
    assert isinstance(result, Failure)
    assert result.error_code is ErrorCode.INTERNAL
    assert [str(e) for e in rig.fatal] == ["disk on fire"]
    later = rig.pump.submit(GetOp("anything"))
    assert isinstance(later, Failure)
    assert later.error_code is ErrorCode.INTERNAL


async def test_close_syncs_and_answers_what_is_held(make_rig: MakeRig) -> None:
    rig = make_rig("always")
    key = local_key(rig.node, "c")
    pending = rig.pump.submit(PutOp(key, b"v"))
    rig.journal.gate.set()
    await rig.pump.close()
    assert await resolved(pending) == Written(key, 1)
    assert rig.storage.synced_lsn == 1
    refused = rig.pump.submit(GetOp(key))
    assert isinstance(refused, Failure)
    assert refused.error_code is ErrorCode.UNAVAILABLE
