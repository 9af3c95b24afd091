"""Node.step composing replicas: effects translated, redirects, deadlines, durable marks, Started and Synced.

A scripted replica stands in for a protocol: it records every input and answers with what the test queues,
so each translation the node makes is asserted exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import codec
from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.effects import CancelTimer, Effect, Reply, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.map_gossip import GOSSIP_INTERVAL_MS
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    ClientOp,
    ClientRequest,
    Failure,
    Forward,
    ForwardReply,
    GetOp,
    Message,
    PutOp,
    ScanOp,
    ScanPage,
    SendFailed,
    Started,
    Synced,
    TimerFired,
    Written,
)
from kvstore.node import Node
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage
from replication import replica as rep
from replication.replica import LogEntry
from replication.vclock import VectorClock

TIMEOUT_MS = 2000
# Inputs the scripted replica answers with a function of the input.
Script = Callable[[rep.ReplicaInput], list[rep.ReplicaEffect]]


@dataclass
class Scripted:
    """A replica that records its inputs and answers each with ``script(input)`` (nothing by default)."""

    partition: int
    script: Script = lambda inp: []
    inputs: list[tuple[int, rep.ReplicaInput]] = field(default_factory=list)
    scan_answer: object = ScanPage((), truncated=False)

    def step(self, now_ms: int, inp: rep.ReplicaInput) -> list[rep.ReplicaEffect]:
        self.inputs.append((now_ms, inp))
        return self.script(inp)

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        return self.scan_answer


def answer_calls(result: Callable[[rep.ClientCall], object], durable: bool = False) -> Script:
    def script(inp: rep.ReplicaInput) -> list[rep.ReplicaEffect]:
        return [rep.Answer(inp.token, result(inp), durable)] if isinstance(inp, rep.ClientCall) else []

    return script


def config(fsync: str = "batch", nodes: int = 2) -> ClusterConfig:
    # n1 holds partitions 0 and 2, n2 holds 1 and 3 (with two nodes).
    return local_cluster(nodes, partitions=4, storage=StorageConfig(fsync=fsync))  # type: ignore[arg-type]


def make_node(node_id: str, cfg: ClusterConfig, seed: int = 1) -> Node:
    node = Node(node_id, cfg, MemoryStorage(), random.Random(seed))
    node.step(0, Started())
    return node


def key_in(node: Node, partition: int, index: int = 0) -> str:
    pmap = node.partition_map
    return [k for k in (f"k{i}" for i in range(1000)) if pmap.partition_for_key(k) == partition][index]


def request(node: Node, now_ms: int, request_id: int, op: ClientOp) -> list[Effect]:
    return node.step(now_ms, ClientRequest(request_id, op))


def install(node: Node, partition: int, script: Script = lambda inp: []) -> Scripted:
    replica = Scripted(partition, script)
    node.replicas[partition] = replica
    return replica


def only_send(effects: list[Effect]) -> Message:
    sends = [e.msg for e in effects if isinstance(e, Send)]
    assert len(sends) == 1, effects
    return sends[0]


def introduce(a: Node, b: Node) -> None:
    """Tell ``a`` ``b``'s incarnation, as a first exchange would (so forwards are not refused once)."""
    a._forwarder._peer_incarnations[b.node_id] = b.incarnation


# ---------------------------------------------------------------- translating a replica's effects


def test_started_gives_every_replica_what_its_storage_recovered() -> None:
    disk = SimDisk()
    storage = SimStorage(disk)
    storage.log(2).set_hard_state(b"term 3")
    storage.log(2).append([LogEntry(1, 3, b"x"), LogEntry(2, 3, b"y")])
    storage.set_applied_index(2, 1)
    storage.sync()
    node = Node("n1", config(), SimStorage(disk), random.Random(1))
    replicas = {p: install(node, p) for p in (0, 2)}
    assert node.step(5, Started()) == [SetTimer("gossip", 5 + GOSSIP_INTERVAL_MS)]  # the replicas set no timer
    assert replicas[0].inputs == [(5, rep.ReplicaStarted(rep.Recovered(0, None, rep.LogBounds(0, 0, 0))))]
    assert replicas[2].inputs == [(5, rep.ReplicaStarted(rep.Recovered(1, b"term 3", rep.LogBounds(0, 0, 2))))]


def test_send_to_becomes_a_message_for_the_partition_and_timers_are_namespaced() -> None:
    node = make_node("n1", config())
    body = GetOp("anything")
    effects: list[rep.ReplicaEffect] = [
        rep.SendTo("n2", body),
        rep.SendTo("n2", body, durable=True),
        rep.StartTimer("tick", 700),
        rep.StopTimer("tick"),
    ]
    install(node, 2, lambda inp: effects if isinstance(inp, rep.TimerFired) else [])
    assert node.step(500, TimerFired("p/2/elect")) == [
        Send(Message("n1", "n2", 2, body)),
        Send(Message("n1", "n2", 2, body), durable=True),
        SetTimer("p/2/tick", 700),
        CancelTimer("p/2/tick"),
    ]
    assert node.replicas[2].inputs == [(500, rep.TimerFired("elect"))]  # type: ignore[attr-defined]


def test_a_replica_timer_keeps_its_delay_when_the_node_clock_stepped_back() -> None:
    node = make_node("n1", config())
    replica = install(node, 0, lambda inp: [rep.StartTimer("t", 1500)] if isinstance(inp, rep.PeerMessage) else [])
    node.step(1000, Synced(0))
    # The clock steps back 400 ms: the replica still sees 1000 (expiry never goes back), the timer keeps its
    # 500 ms delay on the node clock the driver fires it on.
    assert node.step(600, Message("n2", "n1", 0, GetOp("x"))) == [SetTimer("p/0/t", 1100)]
    assert replica.inputs[-1] == (1000, rep.PeerMessage("n2", GetOp("x")))


def test_peer_messages_send_failures_and_syncs_reach_the_replica() -> None:
    node = make_node("n1", config())
    replicas = {p: install(node, p) for p in (0, 2)}
    body = Written("x", 1)
    node.step(1, Message("n2", "n1", 0, body))
    node.step(2, SendFailed(Message("n1", "n2", 2, body)))
    node.step(3, Synced(17))
    assert replicas[0].inputs == [(1, rep.PeerMessage("n2", body)), (3, rep.Synced())]
    assert replicas[2].inputs == [(2, rep.PeerUnreachable("n2", body)), (3, rep.Synced())]
    # Not for a partition held here, or not from a member: nobody hears of it.
    node.step(4, Message("n2", "n1", 1, body))
    node.step(5, Message("mallory", "n1", 0, body))
    node.step(6, SendFailed(Message("n1", "n2", 3, body)))
    assert [len(r.inputs) for r in replicas.values()] == [2, 2]


# ---------------------------------------------------------------- redirects


def test_a_local_op_redirected_to_another_member_is_forwarded_there_once() -> None:
    cfg = config()
    n1, n2 = make_node("n1", cfg), make_node("n2", cfg, seed=2)
    introduce(n1, n2)
    key = key_in(n1, 0)
    install(n1, 0, answer_calls(lambda inp: rep.Redirect("not_leader", leader="n2")))
    # n2 holds a copy of partition 0 too, and leads it.
    install(n2, 0, answer_calls(lambda inp: Written(key, 9)))
    effects = request(n1, 10, 1, PutOp(key, b"v"))
    forward = Forward(n1.incarnation, 1, n2.incarnation, PutOp(key, b"v"))
    assert effects == [Send(Message("n1", "n2", 0, forward)), SetTimer("fwd/1", 10 + TIMEOUT_MS)]
    answer = n2.step(11, only_send(effects))
    assert answer == [Send(Message("n2", "n1", 0, ForwardReply(n1.incarnation, 1, n2.incarnation, Written(key, 9))))]
    assert n1.step(12, only_send(answer)) == [CancelTimer("fwd/1"), Reply(1, Written(key, 9))]
    assert n1.inflight == 0


def test_an_op_redirected_again_where_it_was_forwarded_fails_not_leader_instead_of_circling() -> None:
    cfg = config()
    n1, n2 = make_node("n1", cfg), make_node("n2", cfg, seed=2)
    introduce(n1, n2)
    key = key_in(n1, 0)
    install(n1, 0, answer_calls(lambda inp: rep.Redirect("not_leader", leader="n2")))
    install(n2, 0, answer_calls(lambda inp: rep.Redirect("not_leader", leader="n1")))
    answer = n2.step(11, only_send(request(n1, 10, 1, GetOp(key))))
    failure = Failure.of(ErrorCode.NOT_LEADER, "n2 does not lead partition 0 (its leader is n1); the op did not happen")
    assert answer == [Send(Message("n2", "n1", 0, ForwardReply(n1.incarnation, 1, n2.incarnation, failure)))]
    assert n1.step(12, only_send(answer)) == [CancelTimer("fwd/1"), Reply(1, failure)]
    assert ErrorCode.NOT_LEADER.definite and ErrorCode.NOT_LEADER.http_status == 503


@pytest.mark.parametrize(
    ("redirect", "code", "message"),
    [
        (rep.Redirect("not_leader"), ErrorCode.NOT_LEADER, "n1 does not lead partition 0 (no leader is known)"),
        (rep.Redirect("not_leader", "n1"), ErrorCode.NOT_LEADER, "n1 does not lead partition 0 (its leader is n1)"),
        (rep.Redirect("not_leader", "zed"), ErrorCode.NOT_LEADER, "n1 does not lead partition 0 (its leader is zed)"),
        (
            rep.Redirect("wrong_epoch", epoch=7),
            ErrorCode.WRONG_EPOCH,
            "partition 0 is at epoch 7 on n1, not the epoch the op was routed with",
        ),
        (
            rep.Redirect("wrong_epoch", leader="n2"),
            ErrorCode.WRONG_EPOCH,
            "partition 0 is at another epoch on n1, not the epoch the op was routed with",
        ),
    ],
    ids=["no-hint", "hint-is-self", "hint-not-a-member", "wrong-epoch", "wrong-epoch-with-hint"],
)
def test_a_redirect_the_node_cannot_follow_fails_definitely(
    redirect: rep.Redirect, code: ErrorCode, message: str
) -> None:
    node = make_node("n1", config())
    install(node, 0, answer_calls(lambda inp: redirect))
    failure = Failure.of(code, message + "; the op did not happen")
    assert request(node, 1, 1, GetOp(key_in(node, 0))) == [Reply(1, failure)]
    # Definite, and 503: a retry (at the leader, or with a current map) may succeed.
    assert code.definite and code.http_status == 503 and node.inflight == 0


def test_a_redirected_op_that_a_peer_forwarded_is_answered_not_passed_on() -> None:
    node = make_node("n1", config())
    install(node, 0, answer_calls(lambda inp: rep.Redirect("not_leader", leader="n2")))
    key = key_in(node, 0)
    effects = node.step(1, Message("n2", "n1", 0, Forward(77, 5, node.incarnation, PutOp(key, b"v"))))
    failure = Failure.of(ErrorCode.NOT_LEADER, "n1 does not lead partition 0 (its leader is n2); the op did not happen")
    assert effects == [Send(Message("n1", "n2", 0, ForwardReply(77, 5, node.incarnation, failure)))]


def test_a_batch_entry_redirected_is_forwarded_and_joins_its_batch() -> None:
    cfg = config()
    n1, n2 = make_node("n1", cfg), make_node("n2", cfg, seed=2)
    introduce(n1, n2)
    here, led_elsewhere = key_in(n1, 2), key_in(n1, 0)
    install(n1, 0, answer_calls(lambda inp: rep.Redirect("not_leader", leader="n2")))
    install(n2, 0, answer_calls(lambda inp: Written(led_elsewhere, 4)))
    effects = request(n1, 1, 1, BatchPutOp((PutOp(led_elsewhere, b"a"), PutOp(here, b"b"))))
    answer = n2.step(2, only_send(effects))
    [reply] = [e for e in n1.step(3, only_send(answer)) if isinstance(e, Reply)]
    assert reply == Reply(1, BatchResults((Written(led_elsewhere, 4), Written(here, 1))))


def test_a_scan_of_a_partition_that_redirects_fails_definitely() -> None:
    node = make_node("n1", config(nodes=1))
    install(node, 3).scan_answer = rep.Redirect("not_leader")
    [reply] = request(node, 1, 1, ScanOp("", None, 10))
    message = "n1 does not lead partition 3 (no leader is known); the op did not happen"
    assert reply == Reply(1, Failure.of(ErrorCode.NOT_LEADER, message))


# ---------------------------------------------------------------- deadlines


def test_an_op_a_replica_does_not_answer_at_once_gets_a_deadline() -> None:
    node = make_node("n1", config())
    replica = install(node, 0)
    key = key_in(node, 0)
    assert request(node, 100, 1, GetOp(key)) == [SetTimer("call/1", 100 + TIMEOUT_MS)]
    assert replica.inputs[-1] == (100, rep.ClientCall(1, GetOp(key)))
    assert node.inflight == 1
    timeout = Failure.of(ErrorCode.TIMEOUT, "partition 0 did not answer in time; the op may have happened")
    assert node.step(100 + TIMEOUT_MS, TimerFired("call/1")) == [Reply(1, timeout)]
    assert not ErrorCode.TIMEOUT.definite and node.inflight == 0
    # The replica answers late: nobody waits any more.
    replica.script = lambda inp: [rep.Answer(1, Written(key, 1))]
    assert node.step(100 + TIMEOUT_MS + 1, Synced(0)) == []
    assert node.step(100 + TIMEOUT_MS + 2, TimerFired("call/1")) == []


def test_an_answer_in_a_later_step_stops_the_deadline() -> None:
    node = make_node("n1", config())
    replica = install(node, 0)
    key = key_in(node, 0)
    request(node, 100, 1, PutOp(key, b"v"))
    replica.script = lambda inp: [rep.Answer(1, Written(key, 5), durable=True)] if isinstance(inp, rep.Synced) else []
    assert node.step(150, Synced(3)) == [CancelTimer("call/1"), Reply(1, Written(key, 5), durable=True)]
    assert node.inflight == 0


def test_ops_answered_at_once_cost_no_timer() -> None:
    node = make_node("n1", config(nodes=1))
    for request_id, key in enumerate(("a", "b", "c")):
        effects = request(node, 1, request_id, PutOp(key, b"v"))
        assert [type(e) for e in effects] == [Reply]


# ---------------------------------------------------------------- durable marks


def test_under_batch_only_what_a_replica_marks_durable_waits() -> None:
    node = make_node("n1", config("batch"))
    key = key_in(node, 0)
    marked = install(node, 0, answer_calls(lambda inp: Written(key, 1), durable=True))
    assert request(node, 1, 1, PutOp(key, b"v")) == [Reply(1, Written(key, 1), durable=True)]
    marked.script = answer_calls(lambda inp: Written(key, 2))
    assert request(node, 2, 2, PutOp(key, b"v")) == [Reply(2, Written(key, 2))]
    # A peer's forward is answered with the mark too.
    marked.script = answer_calls(lambda inp: Written(key, 3), durable=True)
    effects = node.step(3, Message("n2", "n1", 0, Forward(77, 5, node.incarnation, PutOp(key, b"v"))))
    reply = ForwardReply(77, 5, node.incarnation, Written(key, 3))
    assert effects == [Send(Message("n1", "n2", 0, reply), durable=True)]
    # A duplicate answered from memory keeps it: the first answer may still be waiting for its sync.
    assert node.step(4, Message("n2", "n1", 0, Forward(77, 5, node.incarnation, PutOp(key, b"v")))) == effects


def test_a_gathered_result_is_durable_if_any_part_was() -> None:
    node = make_node("n1", config("batch", nodes=1))
    a, b = key_in(node, 0), key_in(node, 1)
    install(node, 0, answer_calls(lambda inp: Written(a, 1), durable=True))
    install(node, 1, answer_calls(lambda inp: Written(b, 1)))
    [reply] = request(node, 1, 1, BatchPutOp((PutOp(a, b"x"), PutOp(b, b"y"))))
    assert reply == Reply(1, BatchResults((Written(a, 1), Written(b, 1))), durable=True)
    install(node, 0, answer_calls(lambda inp: Written(a, 2)))
    assert request(node, 2, 2, BatchPutOp((PutOp(a, b"x"), PutOp(b, b"y")))) == [
        Reply(2, BatchResults((Written(a, 2), Written(b, 1))))
    ]


def test_under_always_every_send_and_reply_is_durable() -> None:
    cfg = config("always")
    n1, n2 = make_node("n1", cfg), make_node("n2", cfg, seed=2)
    local, remote = key_in(n1, 0), key_in(n1, 1)
    effects = request(n1, 1, 1, PutOp(local, b"v")) + request(n1, 2, 2, GetOp(remote))
    refused = n2.step(3, only_send(effects[1:]))
    resent = n1.step(4, only_send(refused))
    answer = n2.step(5, only_send(resent))
    final = n1.step(6, only_send(answer))
    for effect in effects + refused + resent + answer + final:
        if isinstance(effect, (Send, Reply)):
            assert effect.durable, effect
    assert Reply(1, Written(local, 1), durable=True) in effects
    assert isinstance(final[-1], Reply) and final[-1].result.code == "not_found"  # type: ignore[union-attr]
    # Definite refusals before anything ran are durable too: under "always" nothing leaves unsynced.
    bad_key = Failure.of(ErrorCode.BAD_KEY, "key must be a non-empty string")
    assert request(n1, 7, 3, GetOp("")) == [Reply(3, bad_key, durable=True)]


# ---------------------------------------------------------------- single mode end to end


def test_single_mode_versions_go_on_after_a_restart() -> None:
    cfg = config(nodes=1)
    disk = SimDisk()
    node = Node("n1", cfg, SimStorage(disk), random.Random(1))
    node.step(0, Started())
    key = key_in(node, 1)
    assert request(node, 1, 1, PutOp(key, b"a")) == [Reply(1, Written(key, 1))]
    request(node, 2, 2, PutOp(key, b"b"))
    node.storage.sync()
    restarted = Node("n1", cfg, SimStorage(disk), random.Random(2))
    restarted.step(3, Started())
    assert request(restarted, 4, 3, PutOp(key, b"c")) == [Reply(3, Written(key, 3))]


def test_protocol_classes_are_registered_with_the_codec() -> None:
    for message in (LogEntry(3, 2, b"entry"), VectorClock.of({"n1": 2, "n2": 1})):
        assert codec.decode(codec.encode(message)) == message


# ---------------------------------------------------------------- peer input never raises

_BODIES = st.sampled_from(
    [
        GetOp("k"),
        Written("k", 1),
        ScanPage((), truncated=False),
        LogEntry(1, 1, b"x"),
        VectorClock.of({"n2": 1}),
        Forward(77, 1, 0, GetOp("k")),
        ForwardReply(77, 1, 5, Written("k", 1)),
        Message("n2", "n1", 0, GetOp("k")),
    ]
)
_PEER_INPUTS = st.one_of(
    st.builds(Message, st.sampled_from(["n1", "n2", "x"]), st.sampled_from(["n1", "n2"]), st.integers(-5, 5), _BODIES),
    st.builds(
        SendFailed,
        st.builds(Message, st.just("n1"), st.sampled_from(["n2", "x"]), st.integers(-5, 5), _BODIES),
    ),
    st.builds(Synced, st.integers(0, 10)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PEER_INPUTS, max_size=20))
def test_peer_input_to_single_copies_never_raises_nor_leaves_anyone_waiting(inputs: list[object]) -> None:
    node = make_node("n1", config())
    for now_ms, inp in enumerate(inputs, start=1):
        node.step(now_ms, inp)  # type: ignore[arg-type]
    assert node.inflight == 0
