"""Every registered message of kvstore.messages survives the codec round trip the simulator applies."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import kvstore.messages as messages
from kvstore.codec import decode, encode, registered
from kvstore.errors import ErrorCode
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ChangeItem,
    ChangesOp,
    ChangesPage,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    FoundSiblings,
    GetOp,
    MapUpdate,
    Message,
    MovedPartitionState,
    MovedRecord,
    MoveFence,
    MoveInstalled,
    PutOp,
    RaftBatch,
    RaftSnapshotPart,
    ScanItem,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    SnapshotPoint,
    Stored,
    Written,
)
from partitioning.stream import StreamChunk, StreamDone
from replication.raft_messages import AppendEntries, Heartbeat, HeartbeatReply
from replication.replica import LogEntry

EXAMPLES: list[object] = [
    GetOp("k"),
    GetOp("ключ/🙂"),
    PutOp("k", b"\x00\xff" * 10),
    PutOp("k", b"", ttl_ms=5),
    DeleteOp("k"),
    CasOp("k", None, b"new"),
    CasOp("k", b"old", None, ttl_ms=1),
    ScanOp("a", None, 10),
    ScanOp("a", "z", 1),
    BatchGetOp(("a", "b")),
    BatchPutOp((PutOp("a", b"1"), PutOp("b", b"2", 9))),
    Found("k", b"v", 3),
    Found("k", b"v", 3, expires_at_ms=1000),
    FoundSiblings("k", (b"a", b"b"), b"\x91\x92\xa2n1\x02"),
    FoundSiblings("k", (), b""),
    Stored("k", b"\x91\x92\xa2n1\x02", 2),
    Written("k", 2**62),
    Deleted("k", True),
    ScanItem("k", b"v", 1),
    ScanPage((ScanItem("a", b"1", 1), ScanItem("b", b"2", 2)), truncated=True),
    ScanPage((), truncated=False),
    Failure.of(ErrorCode.TIMEOUT, "no answer"),
    BatchResults((Found("a", b"1", 1), Written("b", 2), Deleted("c", False), Failure.of(ErrorCode.NOT_FOUND, "x"))),
    Forward(2**63 - 1, 1, 0, PutOp("k", b"v")),
    Forward(1, 2, 2**63 - 1, ScanPartitionsOp((1, 3, 5), "a", None, 7)),
    Forward(1, 3, 5, BatchPutOp((PutOp("a", b"1"),))),
    ForwardReply(1, 9, 2, ScanPage((ScanItem("a", b"1", 1),), truncated=False)),
    ForwardReply(1, 9, 2, BatchResults((Written("a", 1),))),
    ForwardRefused(1, 9, 0, 2),
    ForwardRefused(1, 9, 0, 2, map_epoch=7),
    MapUpdate((("n1", "127.0.0.1:7001", "active", 1), ("n2", "", "leaving", 2)), (("n1",), ("n2", "n1")), (1, 4)),
    Message("n1", "n2", NODE_PARTITION, MapUpdate((("n1", "", "active", 1),), (("n1",),), (1,))),
    ScanPartitionsOp((0,), "", "zz", 1),
    PutOp("__fs/on/v/1", b"\x91\x93\xa1a\x01\xc0", merge=True),
    ChangesOp(3, 17, 100, "__fs/on/"),
    ChangeItem("k", None, 9),
    ChangesPage(3, (ChangeItem("a", b"1", 4, 99), ChangeItem("b", None, 5)), 5, True, "n1"),
    ForwardReply(1, 9, 2, ChangesPage(0, (), 0, False, "")),
    Message("n1", "n2", 5, Forward(1, 1, 0, GetOp("k"))),
    Message("n2", "n1", NODE_PARTITION, ForwardReply(1, 1, 2, Failure.of(ErrorCode.OVERLOADED, "busy"))),
    RaftBatch(()),
    Message(
        "n1",
        "n2",
        NODE_PARTITION,
        RaftBatch(((0, Heartbeat(3, 7, 2)), (5, AppendEntries(3, 7, 2, (LogEntry(8, 3, b"\x01c"),), 7)))),
    ),
    Message("n2", "n1", NODE_PARTITION, RaftBatch(((63, HeartbeatReply(3, 2, 9)),))),
    MovedRecord(b"v", 3, None, b"", ()),
    MovedRecord(None, 4, 99, b"ctx", ((b"s", 2, b""), (None, 1, b"c"))),
    MovedPartitionState(7),
    MoveFence("n2", 3),
    MoveInstalled("n1", 3, 2**40),
    Message(
        "n1",
        "n2",
        2,
        StreamChunk(
            3,
            2**40,
            0,
            -1,
            "snapshot",
            (("", MovedPartitionState(7)), ("k", MovedRecord(b"v", 3, None, b"", ())), ("d", None)),
        ),
    ),
    SnapshotPoint(41, 3),
    RaftSnapshotPart(3, StreamDone(3, 2**40)),
    Message(
        "n1",
        "n3",
        0,
        RaftSnapshotPart(3, StreamChunk(3, 2**40, 0, -1, "snapshot", (("", SnapshotPoint(41, 3)), ("d", None)))),
    ),
]


def registered_message_classes() -> set[type]:
    return {
        cls
        for _, cls in inspect.getmembers(messages, inspect.isclass)
        if cls.__module__ == messages.__name__ and dataclasses.is_dataclass(cls) and registered(cls.__name__) is cls
    }


def test_examples_cover_every_registered_message_class() -> None:
    covered = {type(example) for example in EXAMPLES}
    missing = sorted(cls.__name__ for cls in registered_message_classes() - covered)
    assert missing == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(example: object) -> None:
    decoded = decode(encode(example))
    assert decoded == example
    assert type(decoded) is type(example)
