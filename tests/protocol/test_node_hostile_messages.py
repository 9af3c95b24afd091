"""Node.step given well-typed but wrong peer messages: it answers or ignores them, and never raises.

The codec guarantees types (tests/unit/test_codec_validation.py); what a peer says can still be wrong:
addressed elsewhere, for a partition the node does not hold, for a forward nobody sent, with an op
that breaks a limit, or with a result that does not answer the op. A raise inside Node.step stops a
node process (the pump's caller), so each of these must end in a reply or in nothing.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from kvstore.config import ClusterConfig, Limits, StorageConfig, local_cluster
from kvstore.effects import CancelTimer, Effect, Reply, Send
from kvstore.errors import ErrorCode
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    ClientRequest,
    Deleted,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    GetOp,
    MapUpdate,
    Message,
    PutOp,
    Result,
    ScanItem,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    Started,
    Written,
)
from kvstore.node import Node
from kvstore.storage.memory import MemoryStorage
from kvstore.validation import MAX_TTL_MS

INT64_MAX = 2**63 - 1
TIMEOUT_MS = 2000


def make_config() -> ClusterConfig:
    # Two nodes, four partitions: n1 owns partitions 0 and 2, n2 owns 1 and 3.
    # Under "batch" nothing here waits for a sync, so effects compare equal unmarked.
    limits = replace(Limits(), max_value_bytes=8, max_batch_keys=3)
    return local_cluster(2, partitions=4, storage=StorageConfig(fsync="batch"), limits=limits)


def make_node(node_id: str = "n1", seed: int = 1) -> Node:
    node = Node(node_id, make_config(), MemoryStorage(), random.Random(seed))
    node.step(0, Started())
    return node


def key_of(node: Node, owner: str, index: int = 0) -> str:
    pmap = node.partition_map
    return [k for k in (f"k{i}" for i in range(1000)) if pmap.owner(pmap.partition_for_key(k)) == owner][index]


def partition_of(node: Node, key: str) -> int:
    return node.partition_map.partition_for_key(key)


def from_n2(node: Node, op: ClientOp | ScanPartitionsOp, partition: int = 0, forward_id: int = 5) -> Message:
    """A forward from n2 addressed to ``node``'s current life, so ``node`` executes it."""
    return Message("n2", "n1", partition, Forward(77, forward_id, node.incarnation, op))


def answer_to_n2(node: Node, result: Result, partition: int = 0, forward_id: int = 5) -> list[Effect]:
    answer = Send(Message("n1", "n2", partition, ForwardReply(77, forward_id, node.incarnation, result)))
    if isinstance(result, Failure) and result.code == ErrorCode.WRONG_EPOCH.value:
        # A wrong_epoch refusal comes with this node's map: the sender's map is wrong here, whatever its epoch.
        return [Send(Message("n1", "n2", NODE_PARTITION, MapUpdate.of(node.partition_map)), True), answer]
    return [answer]


def request(node: Node, now_ms: int, request_id: int, op: ClientOp) -> list[Effect]:
    return node.step(now_ms, ClientRequest(request_id, op))


def only_forward(effects: list[Effect]) -> tuple[Message, Forward]:
    sends = [e.msg for e in effects if isinstance(e, Send)]
    assert len(sends) == 1, effects
    assert isinstance(sends[0].body, Forward)
    return sends[0], sends[0].body


# ---------------------------------------------------------------- messages that are not for this node


@pytest.mark.parametrize(
    ("src", "dst"),
    [("n2", "n3"), ("n2", "n2"), ("mallory", "n1"), ("n1", "n1"), ("", "n1")],
    ids=["dst-not-a-member", "dst-is-the-sender", "src-not-a-member", "src-is-this-node", "src-empty"],
)
def test_a_message_not_from_a_peer_to_this_node_is_ignored(src: str, dst: str) -> None:
    node = make_node()
    key = key_of(node, "n1")
    effects = node.step(
        10, Message(src, dst, partition_of(node, key), Forward(77, 5, node.incarnation, PutOp(key, b"v")))
    )
    assert effects == []
    assert node.storage.key_count() == 0
    assert node.inflight == 0


@pytest.mark.parametrize("body", [GetOp("k"), Written("k", 1), Message("n2", "n1", 0, GetOp("k"))])
@pytest.mark.parametrize("partition", [0, 1, -1, -(2**63), INT64_MAX])
def test_a_body_that_is_not_node_traffic_is_ignored_for_any_partition(body: object, partition: int) -> None:
    node = make_node()
    assert node.step(10, Message("n2", "n1", partition, body)) == []
    assert node.inflight == 0


# ---------------------------------------------------------------- forwards the node did not expect


@pytest.mark.parametrize("partition", [1, 3, -1, 4, -(2**63), INT64_MAX])
def test_a_forward_names_any_partition_the_op_is_routed_by_its_key(partition: int) -> None:
    node = make_node()
    key = key_of(node, "n1")
    assert request(node, 1, 1, PutOp(key, b"v")) == [Reply(1, Written(key, 1))]
    # The partition of the message is echoed back; the op runs where its key lives, here.
    assert node.step(10, from_n2(node, GetOp(key), partition)) == answer_to_n2(node, Found(key, b"v", 1), partition)


def test_a_forward_for_a_key_this_node_does_not_own_is_refused_not_passed_on() -> None:
    # The sender's map put the key here and this node's puts it elsewhere: passing it on could go round in
    # circles between two maps, so it is refused, definitely (it ran nowhere), for the sender to retry.
    node = make_node()
    key = key_of(node, "n2")
    partition = partition_of(node, key)
    refused = Failure.of(
        ErrorCode.WRONG_EPOCH, f"n1 does not hold partition {partition} (epoch 1 puts it on n2); the op did not happen"
    )
    assert node.step(10, from_n2(node, GetOp(key), partition)) == answer_to_n2(node, refused, partition)
    assert node.inflight == 0


@pytest.mark.parametrize(
    ("incarnation", "forward_id"),
    [(-1, -1), (0, 0), (-(2**63), INT64_MAX), (INT64_MAX, -(2**63))],
)
def test_any_sender_ids_are_echoed_and_a_duplicate_write_runs_once(incarnation: int, forward_id: int) -> None:
    node = make_node()
    key = key_of(node, "n1")
    message = Message(
        "n2", "n1", partition_of(node, key), Forward(incarnation, forward_id, node.incarnation, PutOp(key, b"v"))
    )
    reply = [
        Send(
            Message(
                "n1", "n2", message.partition, ForwardReply(incarnation, forward_id, node.incarnation, Written(key, 1))
            )
        )
    ]
    assert node.step(10, message) == reply
    assert node.step(11, message) == reply
    assert node.storage.get(partition_of(node, key), key, 11) is not None
    assert node.storage.log(partition_of(node, key)).applied_index() == 1


@pytest.mark.parametrize("target", [0, -1, INT64_MAX], ids=["unknown", "negative", "another-life"])
def test_a_forward_for_another_life_is_refused_not_run(target: int) -> None:
    node = make_node()
    key = key_of(node, "n1")
    message = Message("n2", "n1", 2, Forward(77, 5, target, PutOp(key, b"v")))
    assert node.step(10, message) == [Send(Message("n1", "n2", 2, ForwardRefused(77, 5, target, node.incarnation)))]
    assert node.storage.key_count() == 0


# ---------------------------------------------------------------- ops that break a limit


def limit_cases() -> list[tuple[ClientOp | ScanPartitionsOp, ErrorCode, str]]:
    # Keys n1 owns under make_config() (checked in the test).
    key, other = "k1", "k2"
    return [
        (GetOp(""), ErrorCode.BAD_KEY, "key must be a non-empty string"),
        (GetOp("a\x00b"), ErrorCode.BAD_KEY, "key must not contain NUL (U+0000)"),
        (GetOp("\ud800"), ErrorCode.BAD_KEY, "key is not valid UTF-8 (it holds a lone surrogate)"),
        (GetOp("k" * 1025), ErrorCode.BAD_KEY, "key is 1025 bytes; the limit is 1024"),
        (PutOp(key, b"v", 0), ErrorCode.BAD_REQUEST, "ttl must be a positive whole number, got 0"),
        (
            PutOp(key, b"v", -(2**63)),
            ErrorCode.BAD_REQUEST,
            "ttl must be a positive whole number, got -9223372036854775808",
        ),
        (
            PutOp(key, b"v", MAX_TTL_MS + 1),
            ErrorCode.BAD_REQUEST,
            f"ttl must be at most {MAX_TTL_MS} ms (100 years), got {MAX_TTL_MS + 1}",
        ),
        (
            PutOp(key, b"v", INT64_MAX),
            ErrorCode.BAD_REQUEST,
            f"ttl must be at most {MAX_TTL_MS} ms (100 years), got {INT64_MAX}",
        ),
        (PutOp(key, b"123456789"), ErrorCode.TOO_LARGE, "value is 9 bytes; the limit is 8"),
        (CasOp(key, None, b"v", -1), ErrorCode.BAD_REQUEST, "ttl must be a positive whole number, got -1"),
        (CasOp(key, b"123456789", None), ErrorCode.TOO_LARGE, "value is 9 bytes; the limit is 8"),
        (ScanOp("", None, 0), ErrorCode.BAD_REQUEST, "scan limit must be 1..10000"),
        (ScanOp("b", "a", 1), ErrorCode.BAD_REQUEST, "scan end must not be before start"),
        (ScanOp("\udfff", None, 1), ErrorCode.BAD_REQUEST, "scan start is not valid UTF-8 (it holds a lone surrogate)"),
        (ScanPartitionsOp((0,), "", None, -5), ErrorCode.BAD_REQUEST, "scan limit must be 1..10000"),
        (ScanPartitionsOp((0,), "", None, 0), ErrorCode.BAD_REQUEST, "scan limit must be 1..10000"),
        (ScanPartitionsOp((0,), "", None, INT64_MAX), ErrorCode.BAD_REQUEST, "scan limit must be 1..10000"),
        (ScanPartitionsOp((0,), "b", "a", 1), ErrorCode.BAD_REQUEST, "scan end must not be before start"),
        (
            ScanPartitionsOp((0,), "", "\ud800", 1),
            ErrorCode.BAD_REQUEST,
            "scan end is not valid UTF-8 (it holds a lone surrogate)",
        ),
        (ScanPartitionsOp((), "", None, 1), ErrorCode.BAD_REQUEST, "a partition scan needs distinct partitions"),
        (ScanPartitionsOp((0, 2, 0), "", None, 1), ErrorCode.BAD_REQUEST, "a partition scan needs distinct partitions"),
        (
            ScanPartitionsOp((0, 1), "", None, 1),
            ErrorCode.WRONG_EPOCH,
            "n1 does not hold partition 1 (epoch 1 puts it on n2); the op did not happen",
        ),
        (ScanPartitionsOp((-1,), "", None, 1), ErrorCode.UNAVAILABLE, "n1 does not hold partition -1"),
        (ScanPartitionsOp((INT64_MAX,), "", None, 1), ErrorCode.UNAVAILABLE, f"n1 does not hold partition {INT64_MAX}"),
        (BatchGetOp(()), ErrorCode.BAD_REQUEST, "a batch needs at least one entry"),
        (BatchGetOp(("a", "b", "c", "d")), ErrorCode.TOO_LARGE, "a batch holds at most 3 entries"),
        (BatchGetOp((other, "")), ErrorCode.BAD_KEY, "get[1]: key must be a non-empty string"),
        (
            BatchPutOp((PutOp(other, b"v"), PutOp(key, b"v", 0))),
            ErrorCode.BAD_REQUEST,
            "put[1]: ttl must be a positive whole number, got 0",
        ),
    ]


@pytest.mark.parametrize(("op", "code", "message"), limit_cases(), ids=lambda v: repr(v)[:40])
def test_a_forwarded_op_that_breaks_a_limit_is_answered_with_its_failure(
    op: ClientOp | ScanPartitionsOp, code: ErrorCode, message: str
) -> None:
    node = make_node()
    assert [key_of(node, "n1", 0), key_of(node, "n1", 1)] == ["k1", "k2"]
    assert node.step(10, from_n2(node, op, NODE_PARTITION)) == answer_to_n2(
        node, Failure.of(code, message), NODE_PARTITION
    )
    assert node.storage.key_count() == 0
    assert node.inflight == 0


# ---------------------------------------------------------------- answers nobody asked for


def test_answers_to_forwards_this_node_did_not_send_are_ignored() -> None:
    node = make_node()
    key = key_of(node, "n2")
    message, forward = only_forward(request(node, 1, 1, GetOp(key)))
    token, inc = forward.forward_id, node.incarnation
    stray = [
        ForwardReply(inc, token + 1, 9, Found(key, b"v", 1)),  # unknown token
        ForwardReply(inc, -1, 9, Found(key, b"v", 1)),
        ForwardReply(inc, INT64_MAX, 9, Found(key, b"v", 1)),
        ForwardReply(inc + 1, token, 9, Found(key, b"v", 1)),  # an earlier life of this node
        ForwardRefused(inc, token + 1, 0, 9),
        ForwardRefused(inc, token, 12345, 9),  # a refusal of a copy that was never sent
    ]
    for body in stray:
        assert node.step(2, Message("n2", "n1", message.partition, body)) == [], body
    # The same answer from a node the forward did not go to: n1 is the only other name, itself.
    assert node.step(2, Message("n1", "n1", message.partition, ForwardReply(inc, token, 9, Found(key, b"v", 1)))) == []
    assert node.inflight == 1
    # The real answer still completes the request.
    assert node.step(3, Message("n2", "n1", message.partition, ForwardReply(inc, token, 9, Found(key, b"v", 1)))) == [
        CancelTimer(f"fwd/{token}"),
        Reply(1, Found(key, b"v", 1)),
    ]
    assert node.inflight == 0


def mismatch(op: str, result: str) -> Failure:
    return Failure.of(ErrorCode.INTERNAL, f"n2 answered a {op} with a {result}; the op may have happened")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (ScanPage((), truncated=False), mismatch("GetOp", "ScanPage")),
        (Written("k", 1), mismatch("GetOp", "Written")),
        (BatchResults((Found("k", b"v", 1),)), mismatch("GetOp", "BatchResults")),
        (Failure("made_up_code", "no"), Failure("made_up_code", "no")),
    ],
)
def test_a_reply_that_does_not_answer_a_key_op_fails_it(result: Result, expected: Failure) -> None:
    node = make_node()
    key = key_of(node, "n2")
    message, forward = only_forward(request(node, 1, 1, GetOp(key)))
    body = ForwardReply(node.incarnation, forward.forward_id, 9, result)
    assert node.step(3, Message("n2", "n1", message.partition, body)) == [
        CancelTimer(f"fwd/{forward.forward_id}"),
        Reply(1, expected),
    ]
    assert node.inflight == 0


@pytest.mark.parametrize(
    "result",
    [
        BatchResults((Found("x", b"v", 1),)),  # one entry for two keys
        BatchResults((Found("x", b"v", 1),) * 3),
        BatchResults((Found("x", b"v", 1), Written("y", 2))),  # a write result for a read
        ScanPage((), truncated=False),
        Found("x", b"v", 1),
    ],
    ids=["too-few", "too-many", "wrong-entry", "scan-page", "single-result"],
)
def test_a_reply_that_does_not_answer_a_batch_part_fails_that_part(result: Result) -> None:
    node = make_node()
    local, remote = key_of(node, "n1"), [key_of(node, "n2", 0), key_of(node, "n2", 1)]
    assert request(node, 1, 1, PutOp(local, b"here")) == [Reply(1, Written(local, 1))]
    effects = request(node, 2, 2, BatchGetOp((remote[0], local, remote[1])))
    message, forward = only_forward(effects)
    assert forward.op == BatchGetOp(tuple(remote))
    body = ForwardReply(node.incarnation, forward.forward_id, 9, result)
    failure = mismatch("BatchGetOp", type(result).__name__)
    assert node.step(3, Message("n2", "n1", message.partition, body)) == [
        CancelTimer(f"fwd/{forward.forward_id}"),
        Reply(2, BatchResults((failure, Found(local, b"here", 1), failure))),
    ]
    assert node.inflight == 0


@pytest.mark.parametrize("result", [Found("x", b"v", 1), BatchResults(()), Deleted("x", True)])
def test_a_reply_that_does_not_answer_a_scan_part_fails_the_scan(result: Result) -> None:
    node = make_node()
    local = key_of(node, "n1")
    assert request(node, 1, 1, PutOp(local, b"here")) == [Reply(1, Written(local, 1))]
    message, forward = only_forward(request(node, 2, 2, ScanOp("", None, 10)))
    assert forward.op == ScanPartitionsOp((1, 3), "", None, 10)
    body = ForwardReply(node.incarnation, forward.forward_id, 9, result)
    # Before, a wrong answer was dropped and the scan came back without n2's keys, as if complete.
    assert node.step(3, Message("n2", "n1", message.partition, body)) == [
        CancelTimer(f"fwd/{forward.forward_id}"),
        Reply(2, mismatch("ScanPartitionsOp", type(result).__name__)),
    ]


def test_a_well_formed_scan_part_still_merges() -> None:
    node = make_node()
    local = key_of(node, "n1")
    request(node, 1, 1, PutOp(local, b"here"))
    message, forward = only_forward(request(node, 2, 2, ScanOp("", None, 10)))
    page = ScanPage((ScanItem("a", b"1", 4),), truncated=False)
    body = ForwardReply(node.incarnation, forward.forward_id, 9, page)
    assert node.step(3, Message("n2", "n1", message.partition, body)) == [
        CancelTimer(f"fwd/{forward.forward_id}"),
        Reply(2, ScanPage((ScanItem("a", b"1", 4), ScanItem(local, b"here", 1)), truncated=False)),
    ]


# ---------------------------------------------------------------- clocks beyond what a deadline can hold


@pytest.mark.parametrize("now_ms", [INT64_MAX - 999, INT64_MAX, 2**64])
def test_a_ttl_whose_deadline_would_not_fit_in_64_bits_is_refused(now_ms: int) -> None:
    node = make_node()
    key = key_of(node, "n1")
    message = "this node's clock is too far ahead to hold a deadline 1000 ms from now; the op did not happen"
    refused = Failure.of(ErrorCode.UNAVAILABLE, message)
    assert request(node, now_ms, 1, PutOp(key, b"v", 1000)) == [Reply(1, refused)]
    assert request(node, now_ms, 2, CasOp(key, None, b"v", 1000)) == [Reply(2, refused)]
    assert node.storage.key_count() == 0
    # Without a TTL the write goes through.
    assert request(node, now_ms, 3, PutOp(key, b"v")) == [Reply(3, Written(key, 1))]


def test_the_latest_deadline_that_fits_is_accepted() -> None:
    node = make_node()
    key = key_of(node, "n1")
    now_ms = INT64_MAX - MAX_TTL_MS
    assert request(node, now_ms, 1, PutOp(key, b"v", MAX_TTL_MS)) == [Reply(1, Written(key, 1))]
    assert request(node, now_ms, 2, GetOp(key)) == [Reply(2, Found(key, b"v", 1, expires_at_ms=INT64_MAX))]
