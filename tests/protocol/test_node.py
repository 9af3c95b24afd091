"""Node.step driven by hand: each input fed explicitly, each effect asserted exactly."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from kvstore.config import ClusterConfig, Limits, StorageConfig, local_cluster
from kvstore.effects import CancelTimer, Effect, Reply, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.map_gossip import GOSSIP_INTERVAL_MS
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientRequest,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    GetOp,
    Message,
    PutOp,
    ScanItem,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    SendFailed,
    Started,
    TimerFired,
    Written,
)
from kvstore.node import Node
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage

TIMEOUT_MS = 2000


def make_config(**limits: int) -> ClusterConfig:
    # Two nodes, four partitions: n1 owns partitions 0 and 2, n2 owns 1 and 3. Under "batch" only what a
    # replica marks durable waits for a sync (tests/protocol/test_node_replicas.py covers the marks).
    return local_cluster(2, partitions=4, storage=StorageConfig(fsync="batch"), limits=replace(Limits(), **limits))


def make_node(node_id: str, config: ClusterConfig, seed: int = 1) -> Node:
    node = Node(node_id, config, MemoryStorage(), random.Random(seed))
    node.step(0, Started())
    return node


def keys_of(node: Node, owner: str, count: int) -> list[str]:
    """The first ``count`` keys k0, k1... whose partition ``owner`` owns, in that order."""
    pmap = node.partition_map
    found = [k for k in (f"k{i}" for i in range(1000)) if pmap.owner(pmap.partition_for_key(k)) == owner]
    return found[:count]


def request(node: Node, now_ms: int, request_id: int, op: object) -> list[Effect]:
    return node.step(now_ms, ClientRequest(request_id, op))  # type: ignore[arg-type]


def only_send(effects: list[Effect]) -> Message:
    sends = [e.msg for e in effects if isinstance(e, Send)]
    assert len(sends) == 1, effects
    return sends[0]


class Pair:
    """Two nodes and a hand-cranked network between them."""

    def __init__(self, **limits: int) -> None:
        self.config = make_config(**limits)
        self.n1 = make_node("n1", self.config, seed=1)
        self.n2 = make_node("n2", self.config, seed=2)
        self.nodes = {"n1": self.n1, "n2": self.n2}

    def introduce(self, now_ms: int = 0) -> None:
        """Let each node learn the other's incarnation, as the first exchange between them does."""
        for src, dst in (("n1", "n2"), ("n2", "n1")):
            key = keys_of(self.nodes[src], dst, 1)[0]
            self.settle(now_ms, request(self.nodes[src], now_ms, 10_000, GetOp(key)))

    def settle(self, now_ms: int, effects: list[Effect]) -> list[Reply]:
        """Deliver every Send (in order) until none is left; return the client replies seen."""
        replies: list[Reply] = []
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            if isinstance(effect, Send):
                queue.extend(self.nodes[effect.to].step(now_ms, effect.msg))
            elif isinstance(effect, Reply):
                replies.append(effect)
        return replies


# ---------------------------------------------------------------- local operations


def test_started_starts_every_replica_which_arms_its_ttl_sweep() -> None:
    node = Node("n1", make_config(), MemoryStorage(), random.Random(1))
    # n1 holds partitions 0 and 2; each replica purges its own expired keys. A restarted node also compares maps
    # with its peers (anti-entropy), one per gossip tick.
    assert node.step(50, Started()) == [
        SetTimer("gossip", 50 + GOSSIP_INTERVAL_MS),
        SetTimer("p/0/ttl-sweep", 50 + 1000),
        SetTimer("p/2/ttl-sweep", 50 + 1000),
    ]
    assert node.started


def test_local_put_get_delete_and_cas() -> None:
    node = make_node("n1", make_config())
    key = keys_of(node, "n1", 1)[0]
    assert request(node, 10, 1, PutOp(key, b"v1")) == [Reply(1, Written(key, 1))]
    assert request(node, 11, 2, GetOp(key)) == [Reply(2, Found(key, b"v1", 1))]
    assert request(node, 12, 3, CasOp(key, b"wrong", b"v2")) == [
        Reply(3, Failure.of(ErrorCode.PRECONDITION_FAILED, f"key {key!r} is not the expected value"))
    ]
    assert request(node, 13, 4, CasOp(key, b"v1", b"v2")) == [Reply(4, Written(key, 2))]
    assert request(node, 14, 5, DeleteOp(key)) == [Reply(5, Deleted(key, True))]
    assert request(node, 15, 6, DeleteOp(key)) == [Reply(6, Deleted(key, False))]
    assert request(node, 16, 7, GetOp(key)) == [Reply(7, Failure.of(ErrorCode.NOT_FOUND, f"key {key!r} not found"))]
    assert request(node, 17, 8, CasOp(key, None, b"v3")) == [Reply(8, Written(key, 4))]
    assert node.inflight == 0


def test_ttl_is_in_node_time_and_the_replica_sweep_purges() -> None:
    node = make_node("n1", make_config())
    key = keys_of(node, "n1", 1)[0]
    sweep = f"p/{node.partition_map.partition_for_key(key)}/ttl-sweep"
    assert request(node, 100, 1, PutOp(key, b"v", ttl_ms=500)) == [Reply(1, Written(key, 1))]
    assert request(node, 599, 2, GetOp(key)) == [Reply(2, Found(key, b"v", 1, expires_at_ms=600))]
    assert request(node, 600, 3, GetOp(key)) == [Reply(3, Failure.of(ErrorCode.NOT_FOUND, f"key {key!r} not found"))]
    assert node.storage.key_count() == 1
    assert node.step(1000, TimerFired(sweep)) == [SetTimer(sweep, 2000)]
    assert node.storage.key_count() == 0
    # The purge was the partition's command 2: the next write there is version 3.
    assert request(node, 1001, 4, PutOp(key, b"w")) == [Reply(4, Written(key, 3))]


def test_the_node_works_on_sim_storage_too() -> None:
    config = make_config()
    node = Node("n1", config, SimStorage(SimDisk()), random.Random(1))
    node.step(0, Started())
    key = keys_of(node, "n1", 1)[0]
    assert request(node, 1, 1, PutOp(key, b"v")) == [Reply(1, Written(key, 1))]
    # The record and the partition's applied index, both written and not synced: syncing is the driver's job.
    assert node.storage.written_lsn == 2 and node.storage.synced_lsn == 0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("op", "code"),
    [
        (GetOp(""), ErrorCode.BAD_KEY),
        (PutOp("x" * 17, b"v"), ErrorCode.BAD_KEY),
        (PutOp("k", b"x" * 33), ErrorCode.TOO_LARGE),
        (PutOp("k", "text"), ErrorCode.BAD_REQUEST),  # type: ignore[arg-type]
        (PutOp("k", b"v", ttl_ms=0), ErrorCode.BAD_REQUEST),
        (CasOp("k", b"v", b"x" * 33), ErrorCode.TOO_LARGE),
        (ScanOp("a", None, 0), ErrorCode.BAD_REQUEST),
        (ScanOp("b", "a", 5), ErrorCode.BAD_REQUEST),
        (BatchGetOp(()), ErrorCode.BAD_REQUEST),
        (BatchGetOp(("a", "b", "c", "d", "e")), ErrorCode.TOO_LARGE),
        (BatchPutOp((PutOp("a", b"v"), PutOp("", b"v"))), ErrorCode.BAD_KEY),
    ],
)
def test_invalid_requests_are_refused_before_anything_happens(op: object, code: ErrorCode) -> None:
    node = make_node("n1", make_config(max_key_bytes=16, max_value_bytes=32, max_batch_keys=4))
    effects = request(node, 5, 9, op)
    assert len(effects) == 1
    reply = effects[0]
    assert isinstance(reply, Reply) and reply.request_id == 9
    assert isinstance(reply.result, Failure) and reply.result.error_code is code
    assert node.storage.written_lsn == 0 and node.inflight == 0


# ---------------------------------------------------------------- forwarding


def test_forward_to_owner_and_back() -> None:
    pair = Pair()
    inc1, inc2 = pair.n1.incarnation, pair.n2.incarnation
    key = keys_of(pair.n1, "n2", 1)[0]
    partition = pair.n1.partition_map.partition_for_key(key)
    effects = request(pair.n1, 10, 7, PutOp(key, b"v"))
    # n1 does not know n2's incarnation yet (0): n2 refuses without executing and says who it is.
    first = Forward(inc1, 1, 0, PutOp(key, b"v"))
    assert effects == [Send(Message("n1", "n2", partition, first)), SetTimer("fwd/1", 10 + TIMEOUT_MS)]
    assert pair.n1.inflight == 1
    refused = pair.n2.step(11, only_send(effects))
    assert refused == [Send(Message("n2", "n1", partition, ForwardRefused(inc1, 1, 0, inc2)))]
    assert pair.n2.storage.written_lsn == 0

    # The refused copy ran nowhere, so n1 sends it again, now addressed to n2's current life.
    resent = pair.n1.step(12, only_send(refused))
    assert resent == [Send(Message("n1", "n2", partition, Forward(inc1, 1, inc2, PutOp(key, b"v"))))]
    answer = pair.n2.step(13, only_send(resent))
    assert answer == [Send(Message("n2", "n1", partition, ForwardReply(inc1, 1, inc2, Written(key, 1))))]

    assert pair.n1.step(14, only_send(answer)) == [CancelTimer("fwd/1"), Reply(7, Written(key, 1))]
    assert pair.n1.inflight == 0
    assert pair.n2.storage.get(partition, key, 14) is not None
    assert pair.n1.storage.key_count() == 0


def test_once_known_the_owner_incarnation_is_used_directly() -> None:
    pair = Pair()
    pair.introduce()
    key = keys_of(pair.n1, "n2", 1)[0]
    sent = only_send(request(pair.n1, 5, 8, GetOp(key)))
    assert isinstance(sent.body, Forward) and sent.body.target_incarnation == pair.n2.incarnation
    answer = only_send(pair.n2.step(6, sent))
    assert isinstance(answer.body, ForwardReply)


def test_a_write_refused_after_the_owner_restarted_is_indefinite_not_resent() -> None:
    pair = Pair()
    pair.introduce()
    key = keys_of(pair.n1, "n2", 1)[0]
    sent = only_send(request(pair.n1, 5, 8, PutOp(key, b"v")))
    pair.n2 = pair.nodes["n2"] = make_node("n2", pair.config, seed=42)  # n2 restarts before it arrives
    refused = only_send(pair.n2.step(6, sent))
    effects = pair.n1.step(7, refused)
    timer = [e for e in effects if isinstance(e, CancelTimer)]
    assert len(timer) == 1
    [reply] = [e for e in effects if isinstance(e, Reply)]
    assert reply.request_id == 8 and isinstance(reply.result, Failure) and reply.result.code == "timeout"
    assert not [e for e in effects if isinstance(e, Send)]


def test_a_read_refused_after_the_owner_restarted_is_sent_again() -> None:
    pair = Pair()
    pair.introduce()
    key = keys_of(pair.n1, "n2", 1)[0]
    effects = request(pair.n1, 5, 8, GetOp(key))
    pair.n2 = pair.nodes["n2"] = make_node("n2", pair.config, seed=42)
    [reply] = pair.settle(6, effects)
    assert reply.request_id == 8 and isinstance(reply.result, Failure) and reply.result.code == "not_found"


def test_forward_timeout_is_indefinite_and_a_late_reply_is_ignored() -> None:
    pair = Pair()
    key = keys_of(pair.n1, "n2", 1)[0]
    sent = only_send(request(pair.n1, 0, 3, GetOp(key)))
    effects = pair.n1.step(TIMEOUT_MS, TimerFired("fwd/1"))
    assert effects == [Reply(3, Failure.of(ErrorCode.TIMEOUT, "no answer from n2 in time; the op may have happened"))]
    assert not ErrorCode.TIMEOUT.definite
    late = pair.n2.step(TIMEOUT_MS + 1, sent)
    assert pair.n1.step(TIMEOUT_MS + 2, only_send(late)) == []
    assert pair.n1.inflight == 0


def test_send_failed_means_unavailable_and_definite() -> None:
    pair = Pair()
    key = keys_of(pair.n1, "n2", 1)[0]
    sent = only_send(request(pair.n1, 0, 4, DeleteOp(key)))
    assert pair.n1.step(1, SendFailed(sent)) == [
        CancelTimer("fwd/1"),
        Reply(4, Failure.of(ErrorCode.UNAVAILABLE, "owner n2 is unreachable")),
    ]
    assert ErrorCode.UNAVAILABLE.definite
    # The timer may still fire if the driver raced the cancel: it finds nothing to time out.
    assert pair.n1.step(TIMEOUT_MS, TimerFired("fwd/1")) == []


def test_duplicate_forward_is_answered_from_memory_not_executed_again() -> None:
    pair = Pair()
    pair.introduce()
    key = keys_of(pair.n1, "n2", 1)[0]
    partition = pair.n1.partition_map.partition_for_key(key)
    forward = only_send(request(pair.n1, 0, 1, PutOp(key, b"first")))
    assert isinstance(forward.body, Forward)
    fid = forward.body.forward_id
    first = pair.n2.step(1, forward)
    # A later write by someone else, then the network delivers the old forward again.
    assert request(pair.n2, 2, 50, PutOp(key, b"second")) == [Reply(50, Written(key, 2))]
    again = pair.n2.step(3, forward)
    reply = ForwardReply(pair.n1.incarnation, fid, pair.n2.incarnation, Written(key, 1))
    assert again == first == [Send(Message("n2", "n1", partition, reply))]
    record = pair.n2.storage.get(partition, key, 3)
    assert record is not None and record.value == b"second"
    assert pair.n2.storage.log(partition).applied_index() == 2  # two commands: the first ran once


def test_forward_ids_are_scoped_by_incarnation() -> None:
    pair = Pair()
    key = keys_of(pair.n1, "n2", 1)[0]
    pair.settle(0, request(pair.n1, 0, 1, PutOp(key, b"old")))
    # n1 restarts: forward id 1 again, but a new incarnation, so n2 executes it.
    pair.n1 = pair.nodes["n1"] = make_node("n1", pair.config, seed=99)
    assert pair.n1.incarnation != pair.nodes["n2"].incarnation
    assert pair.settle(5, request(pair.n1, 5, 1, PutOp(key, b"new"))) == [Reply(1, Written(key, 2))]


def test_overloaded_when_in_flight_is_full() -> None:
    pair = Pair(max_inflight=1)
    pair.introduce()
    remote = keys_of(pair.n1, "n2", 1)[0]
    local = keys_of(pair.n1, "n1", 1)[0]
    request(pair.n1, 0, 1, GetOp(remote))  # waits for n2: the table is full
    assert request(pair.n1, 1, 2, GetOp(local)) == [
        Reply(2, Failure.of(ErrorCode.OVERLOADED, "too many requests in flight; retry later"))
    ]
    # A peer's forward is refused the same way, with a definite error sent back to the peer.
    from_n2 = only_send(request(pair.n2, 1, 9, GetOp(local)))
    assert pair.n1.step(2, from_n2) == [
        Send(
            Message(
                "n1",
                "n2",
                from_n2.partition,
                ForwardReply(
                    pair.n2.incarnation,
                    from_n2.body.forward_id,  # type: ignore[attr-defined]
                    pair.n1.incarnation,
                    Failure.of(ErrorCode.OVERLOADED, "n1 has too many requests in flight"),
                ),
            )
        )
    ]


# ---------------------------------------------------------------- scans and batches


def test_scan_merges_pages_across_nodes_with_limit_and_truncation() -> None:
    pair = Pair()
    pair.introduce()
    keys = sorted(keys_of(pair.n1, "n1", 3) + keys_of(pair.n1, "n2", 3))
    for i, key in enumerate(keys):
        pair.settle(i, request(pair.n1, i, 100 + i, PutOp(key, key.encode())))

    effects = request(pair.n1, 20, 1, ScanOp("", None, 4))
    sent = only_send(effects)
    n2_partitions = pair.n1.partition_map.owned_by("n2")
    assert sent.partition == NODE_PARTITION and isinstance(sent.body, Forward)
    expected = Forward(
        pair.n1.incarnation, sent.body.forward_id, pair.n2.incarnation, ScanPartitionsOp(n2_partitions, "", None, 4)
    )
    assert sent.body == expected
    replies = pair.settle(21, effects)
    assert len(replies) == 1 and replies[0].request_id == 1
    page = replies[0].result
    assert isinstance(page, ScanPage)
    assert [item.key for item in page.items] == keys[:4]
    assert page.truncated
    assert page.items[0] == ScanItem(keys[0], keys[0].encode(), page.items[0].version)

    everything = pair.settle(22, request(pair.n1, 22, 2, ScanOp("", None, 100)))[0].result
    assert isinstance(everything, ScanPage) and not everything.truncated
    assert [item.key for item in everything.items] == keys

    bounded = pair.settle(23, request(pair.n2, 23, 3, ScanOp(keys[1], keys[4], 100)))[0].result
    assert isinstance(bounded, ScanPage)
    assert [item.key for item in bounded.items] == keys[1:4]


def test_scan_fails_if_a_part_times_out() -> None:
    pair = Pair()
    pair.introduce()
    timers = [e for e in request(pair.n1, 0, 1, ScanOp("", None, 10)) if isinstance(e, SetTimer)]
    assert len(timers) == 1  # one remote part (n2's); n1's own part completed at once
    effects = pair.n1.step(TIMEOUT_MS, TimerFired(timers[0].key))
    assert len(effects) == 1
    reply = effects[0]
    assert isinstance(reply, Reply) and isinstance(reply.result, Failure) and reply.result.code == "timeout"
    assert pair.n1.inflight == 0


def test_batch_put_and_get_across_owners() -> None:
    pair = Pair()
    a1, a2 = keys_of(pair.n1, "n1", 2)
    b1, b2 = keys_of(pair.n1, "n2", 2)
    puts = BatchPutOp((PutOp(b1, b"1"), PutOp(a1, b"2"), PutOp(b2, b"3"), PutOp(a2, b"4")))
    effects = request(pair.n1, 0, 1, puts)
    sent = only_send(effects)
    assert sent.partition == NODE_PARTITION and isinstance(sent.body, Forward)
    assert sent.body.op == BatchPutOp((PutOp(b1, b"1"), PutOp(b2, b"3")))
    [reply] = pair.settle(1, effects)
    # Versions count per partition: a key's is 2 where its partition already took a write of this batch.
    pmap = pair.n1.partition_map
    va2 = 2 if pmap.partition_for_key(a2) == pmap.partition_for_key(a1) else 1
    vb2 = 2 if pmap.partition_for_key(b2) == pmap.partition_for_key(b1) else 1
    assert reply == Reply(1, BatchResults((Written(b1, 1), Written(a1, 1), Written(b2, vb2), Written(a2, va2))))

    [reply] = pair.settle(2, request(pair.n2, 2, 2, BatchGetOp((a2, b1, "missing-key", a1))))
    assert isinstance(reply.result, BatchResults)
    results = reply.result.results
    assert results[0] == Found(a2, b"4", va2)
    assert results[1] == Found(b1, b"1", 1)
    assert isinstance(results[2], Failure) and results[2].code == "not_found"
    assert results[3] == Found(a1, b"2", 1)
    assert pair.n1.inflight == pair.n2.inflight == 0


def test_batch_part_timeout_fails_only_its_entries() -> None:
    pair = Pair()
    local = keys_of(pair.n1, "n1", 1)[0]
    remote = keys_of(pair.n1, "n2", 1)[0]
    effects = request(pair.n1, 0, 1, BatchPutOp((PutOp(local, b"1"), PutOp(remote, b"2"))))
    assert [type(e) for e in effects] == [Send, SetTimer]
    [timer] = [e for e in effects if isinstance(e, SetTimer)]
    [reply] = pair.n1.step(TIMEOUT_MS, TimerFired(timer.key))
    assert isinstance(reply, Reply) and isinstance(reply.result, BatchResults)
    first, second = reply.result.results
    assert first == Written(local, 1)
    assert isinstance(second, Failure) and second.code == "timeout"


def test_a_reply_from_before_a_restart_is_not_taken_for_a_new_forward() -> None:
    pair = Pair()
    pair.introduce()
    key_a, key_b = keys_of(pair.n1, "n2", 2)
    pair.settle(0, request(pair.n2, 0, 1, PutOp(key_a, b"value of a")))
    old_forward = only_send(request(pair.n1, 1, 1, GetOp(key_a)))
    assert isinstance(old_forward.body, Forward)
    old_reply = only_send(pair.n2.step(2, old_forward))  # on the wire while n1 crashes and restarts
    pair.n1 = pair.nodes["n1"] = make_node("n1", pair.config, seed=99)
    # The new life reuses forward ids from 1: make one with the old forward's id outstanding.
    new_forwards = []
    for request_id in range(7, 7 + old_forward.body.forward_id):
        new_forwards.append(only_send(request(pair.n1, 3, request_id, GetOp(key_b))))
    assert [f.body.forward_id for f in new_forwards][-1] == old_forward.body.forward_id  # type: ignore[attr-defined]
    # The stale reply (from n2, with the right forward id) is ignored: its incarnation is the old life's.
    assert pair.n1.step(4, old_reply) == []
    assert pair.n1.inflight == len(new_forwards)


def test_a_duplicate_forward_after_the_owner_restarts_is_not_executed_again() -> None:
    pair = Pair()
    disk = SimDisk()
    pair.n2 = pair.nodes["n2"] = Node("n2", pair.config, SimStorage(disk), random.Random(2))
    pair.n2.step(0, Started())
    pair.introduce()
    key = keys_of(pair.n1, "n2", 1)[0]
    forward = only_send(request(pair.n1, 0, 1, PutOp(key, b"old")))
    pair.settle(1, pair.n2.step(1, forward))
    assert request(pair.n2, 2, 2, PutOp(key, b"new")) == [Reply(2, Written(key, 2))]
    pair.n2.storage.sync()  # both writes durable, as fsync=always makes them before acknowledging
    restarted = Node("n2", pair.config, SimStorage(disk), random.Random(3))
    restarted.step(3, Started())
    restarted.step(4, forward)  # the network delivers a late duplicate of the first forward
    partition = restarted.partition_map.partition_for_key(key)
    record = restarted.storage.get(partition, key, 5)
    assert record is not None and record.value == b"new"
