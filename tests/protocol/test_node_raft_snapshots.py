"""Leader mode: a follower behind the leader's log compaction catches up by a snapshot, then the log.

Driven by hand with test_node_leader.py's network. The compaction threshold is small
(``limits.raft_compact_entries``) and the streams' chunks are small (4 records, 2 in flight), so a
snapshot takes many chunks and writes land while it streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.config import ClusterConfig, Limits, StorageConfig, local_cluster
from kvstore.effects import Effect, Send
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    DeleteOp,
    Found,
    GetOp,
    KeyOp,
    Message,
    PutOp,
    RaftSnapshotPart,
    SnapshotPoint,
    Written,
)
from kvstore.storage.base import Record
from partitioning.stream import StreamAck, StreamChunk, StreamDone
from replication.raft import LEADER, SNAPSHOT
from replication.replica import LogBounds
from tests.protocol.test_node_leader import Net as LeaderNet
from tests.protocol.test_node_leader import P, leader_config, value_of
from tests.protocol.test_node_moves import SMALL_STREAM

COMPACT_ENTRIES = 5


def snapshot_config() -> ClusterConfig:
    return dataclasses.replace(leader_config(), limits=Limits(raft_compact_entries=COMPACT_ENTRIES))


@dataclass
class Net(LeaderNet):
    """The leader-mode network with small stream chunks, keeping every snapshot message delivered."""

    cfg: ClusterConfig = field(default_factory=snapshot_config)
    delivered: list[Message] = field(default_factory=list)
    # Crash the receiving node right after it took this many more chunks (None: never).
    crash_after_chunks: int | None = None
    # Called with the count of snapshot messages delivered so far, after each chunk a node took.
    on_chunk: Callable[[int], None] | None = None

    def boot(self, node_id: str) -> None:
        super().boot(node_id)
        self.nodes[node_id].snapshots._stream_options = dict(SMALL_STREAM)

    def step(self, node_id: str, inp: object) -> list[Effect]:
        if not (isinstance(inp, Message) and isinstance(inp.body, RaftSnapshotPart)):
            return super().step(node_id, inp)
        self.delivered.append(inp)
        effects = super().step(node_id, inp)
        if isinstance(inp.body.body, StreamChunk) and self.on_chunk is not None:
            self.on_chunk(len(self.delivered))
        if isinstance(inp.body.body, StreamChunk) and self.crash_after_chunks is not None:
            self.crash_after_chunks -= 1
            if self.crash_after_chunks == 0:
                self.crash(node_id)
                self.crash_after_chunks = None
        return effects

    def records(self, node_id: str) -> dict[str, Record]:
        return dict(self.nodes[node_id].storage.copy_of(P))

    def log_bounds(self, node_id: str) -> LogBounds:
        return self.nodes[node_id].storage.log(P).bounds()


def put_many(net: Net, prefix: str, count: int) -> None:
    for start in range(0, count, 10):
        items = tuple(PutOp(f"{prefix}{i:03d}", f"{prefix}-{i}".encode()) for i in range(start, min(start + 10, count)))
        assert isinstance(net.call("n1", BatchPutOp(items)), BatchResults)


def behind_compaction() -> Net:
    """n3 was down while n1 led, took writes and deletes, and compacted past everything n3 holds."""
    net = Net()
    net.run_for(500)
    assert net.leader() == "n1"
    put_many(net, "a", 20)
    net.crash("n3")
    net.run_for(2500)  # the leader's check-quorum rounds find n3 inactive: its log no longer holds compaction
    put_many(net, "b", 40)
    for i in range(0, 20, 2):
        net.call("n1", DeleteOp(f"a{i:03d}"))
    assert net.call("n1", PutOp("a001", b"rewritten")) == Written("a001", net.replica("n1").applied)
    assert net.log_bounds("n1").snapshot_index > net.log_bounds("n3").last_index
    return net


def test_a_follower_behind_compaction_gets_a_snapshot_then_the_log_and_ends_equal() -> None:
    net = behind_compaction()
    n3_records_before, n3_bounds_before = net.records("n3"), net.log_bounds("n3")
    net.boot("n3")
    net.run_for(3000)
    leader, follower = net.replica("n1"), net.replica("n3")
    assert net.nodes["n1"].snapshots.completed == 1
    assert net.leader() == "n1" and follower.leader == "n1"
    # Installed: the log starts after a snapshot point, the records are the leader's (the deleted keys gone).
    assert net.log_bounds("n3").snapshot_index > n3_bounds_before.last_index
    assert net.records("n3") == net.records("n1") != n3_records_before
    assert "a000" not in net.records("n3") and net.records("n3")["a001"].value == b"rewritten"
    assert (follower.commit, follower.applied) == (leader.commit, leader.applied)
    assert leader.progress["n3"].state != SNAPSHOT and leader.progress["n3"].match == leader.commit
    # Then the log: a later write reaches the follower by appends, and a read there sees it.
    net.call("n1", PutOp("after", b"log"))
    net.run_for(500)
    assert net.records("n3") == net.records("n1")
    assert net.records("n3")["after"].value == b"log"
    assert value_of(net.call("n3", GetOp("after"))) == b"log"
    assert net.nodes["n1"].snapshots.completed == 1 and not net.nodes["n1"].snapshots.sending


def test_writes_applied_while_the_snapshot_streams_reach_the_follower_exactly() -> None:
    net = behind_compaction()
    written: list[KeyOp] = []

    def write(chunk: int) -> None:
        # Each chunk the follower takes brings a write (or a delete) at the leader, which commits and applies
        # while the stream goes on: keys behind the cursor, ahead of it, and rewritten ones.
        key = f"b{(7 * chunk) % 40:03d}"
        op: KeyOp = DeleteOp(key) if chunk % 5 == 0 else PutOp(key, f"during-{chunk}".encode())
        written.append(op)
        net.submit("n1", op)

    net.on_chunk = write
    applied_at_start = net.replica("n1").applied
    net.boot("n3")
    net.run_for(3000)
    assert len(written) >= 10
    assert net.nodes["n1"].snapshots.completed >= 1
    assert net.records("n3") == net.records("n1")
    assert net.replica("n3").applied == net.replica("n1").applied
    # The cut is past the writes made before the transfer began: the delta passes carried later ones.
    assert net.log_bounds("n3").snapshot_index > applied_at_start
    last: dict[str, bytes | None] = {}
    for op in written:
        last[op.key] = op.value if isinstance(op, PutOp) else None
    assert {key: net.records("n3")[key].value if key in net.records("n3") else None for key in last} == last


def test_a_stale_or_duplicate_snapshot_and_one_from_a_non_leader_change_nothing() -> None:
    net = behind_compaction()
    net.boot("n3")
    net.run_for(3000)
    chunks = [m for m in net.delivered if m.dst == "n3" and isinstance(m.body, RaftSnapshotPart)]
    assert chunks and all(isinstance(m.body.body, StreamChunk) for m in chunks)
    net.call("n1", PutOp("after", b"log"))
    net.run_for(500)
    records, bounds, applied = net.records("n3"), net.log_bounds("n3"), net.replica("n3").applied
    term = net.replica("n3").term
    # The whole transfer again (a duplicate, stale now: its index is below the follower's commit index).
    for msg in chunks:
        net.step("n3", msg)
    # The same chunks from a node that does not lead, or naming another term.
    for msg in chunks:
        assert isinstance(msg.body, RaftSnapshotPart)
        assert net.step("n3", dataclasses.replace(msg, src="n2")) == []
        assert net.step("n3", dataclasses.replace(msg, body=RaftSnapshotPart(term + 1, msg.body.body))) == []
        assert net.step("n3", dataclasses.replace(msg, body=RaftSnapshotPart(term - 1, msg.body.body))) == []
    assert (net.records("n3"), net.log_bounds("n3"), net.replica("n3").applied) == (records, bounds, applied)
    assert net.replica("n3").term == term


def test_a_follower_that_crashes_mid_transfer_starts_over_and_installs_a_whole_copy() -> None:
    net = behind_compaction()
    before = (net.records("n3"), net.log_bounds("n3"))
    net.crash_after_chunks = 3  # of 20 records in chunks of 4: staged in part, never installed
    net.boot("n3")
    net.run_for(300)
    assert "n3" in net.down and (net.records("n3"), net.log_bounds("n3")) == before
    net.boot("n3")
    net.run_for(6000)
    assert net.nodes["n1"].snapshots.completed == 1
    assert net.log_bounds("n3").snapshot_index > before[1].last_index
    assert net.records("n3") == net.records("n1")
    assert net.replica("n3").applied == net.replica("n1").applied


def test_hostile_snapshot_messages_are_ignored_and_never_raise() -> None:
    net = Net()
    net.run_for(500)
    term = net.replica("n2").term
    chunk = StreamChunk(term, 1, 0, -1, "snapshot", (("", SnapshotPoint(99, term)), ("k", Found("k", b"v", 1))), True)
    before = (net.records("n2"), net.log_bounds("n2"), net.replica("n2").applied)
    bodies: list[object] = [
        RaftSnapshotPart(term, Found("k", b"v", 1)),  # not a stream message
        RaftSnapshotPart("1", chunk),  # type: ignore[arg-type]  # a term that is not an int
        RaftSnapshotPart(term, StreamAck(term, 1, 0)),  # an answer to a transfer n2 never sent
        RaftSnapshotPart(term, StreamDone(term, 1)),
    ]
    for body in bodies:
        for partition in (P, 7, -1):
            assert net.step("n2", Message("n1", "n2", partition, body)) == []
    # A chunk from a node that does not lead n2's term, for n2's partition: never staged.
    assert net.step("n2", Message("n3", "n2", P, RaftSnapshotPart(term, chunk))) == []
    # From the leader: taken, but an item that is not a record is skipped; the snapshot point 99 is past
    # n2's commit index, so the copy (holding no record) is installed and acknowledged.
    effects = net.step("n2", Message("n1", "n2", P, RaftSnapshotPart(term, chunk)))
    assert (net.records("n2"), net.log_bounds("n2").snapshot_index) == ({}, 99) != before[:2]
    assert [type(e.msg.body.body).__name__ for e in effects if isinstance(e, Send)] == ["StreamDone"]


def test_a_node_sends_at_most_its_bound_of_transfers_at_once_and_finishes_them_all() -> None:
    cfg = dataclasses.replace(
        local_cluster(3, partitions=6, mode="leader", replicas=3, storage=StorageConfig(fsync="always")),
        limits=Limits(raft_compact_entries=COMPACT_ENTRIES),
    )
    net = Net(cfg=cfg)
    net.run_for(500)
    led = [p for p in range(6) if net.nodes["n1"].replicas[p].role == LEADER]  # type: ignore[attr-defined]
    assert len(led) == 2
    net.nodes["n1"].snapshots._max_outgoing = 1
    net.crash("n3")
    net.run_for(2500)
    partition_map = net.nodes["n1"].partition_map
    keys = [k for k in (f"key{i:04}" for i in range(400)) if partition_map.partition_for_key(k) in led][:40]
    for key in keys:
        assert isinstance(net.call("n1", PutOp(key, b"v")), Written)
    most = 0

    def watch(_: int) -> None:
        nonlocal most
        most = max(most, len(net.nodes["n1"].snapshots.sending))

    net.on_chunk = watch
    net.boot("n3")
    net.run_for(5000)
    assert most == 1 and net.nodes["n1"].snapshots.completed == 2
    for p in led:
        assert net.nodes["n3"].storage.copy_of(p) == net.nodes["n1"].storage.copy_of(p)
        assert net.nodes["n3"].storage.log(p).bounds().snapshot_index > 0
