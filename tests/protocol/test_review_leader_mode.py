"""Review of leader mode at the node: odd peer input, held ops, snapshots, membership. Driven by hand, deterministic.

Each test here is a bug a hostile review found, fixed since: it asserts the right behaviour.
"""

from __future__ import annotations

import pytest

from kvstore.messages import (
    NODE_PARTITION,
    Found,
    GetOp,
    Message,
    RaftBatch,
    RaftSnapshotPart,
    SetMember,
    SnapshotPoint,
)
from partitioning.partition_map import ACTIVE, LEAVING
from partitioning.stream import StreamChunk
from replication.raft_messages import AppendEntries, RequestVote, TimeoutNow
from replication.replica import LogEntry
from tests.protocol.test_node_leader import NO_SPREAD, P, leader_config
from tests.protocol.test_node_leader import Net as LeaderNet
from tests.protocol.test_node_leader_membership import assert_copies_equal, assert_groups_match_the_map, write
from tests.protocol.test_node_leader_membership import config as membership_config
from tests.protocol.test_node_raft_snapshots import Net as SnapshotNet


@pytest.mark.parametrize("bad_term", ["1", 1.5])
def test_a_snapshot_point_with_a_term_that_is_not_an_int_is_ignored(bad_term: object) -> None:
    net = SnapshotNet()
    net.run_for(500)
    term = net.replica("n2").term
    point = SnapshotPoint(99, bad_term)  # type: ignore[arg-type]
    chunk = StreamChunk(term, 1, 0, -1, "snapshot", (("", point), ("k", Found("k", b"v", 1))), True)
    before = (net.records("n2"), net.log_bounds("n2"))
    # From the leader of n2's term: the chunk is taken, and its point must be refused, not crash the node.
    net.step("n2", Message("n1", "n2", P, RaftSnapshotPart(term, chunk)))
    assert (net.records("n2"), net.log_bounds("n2")) == before


INT64_MAX = (1 << 63) - 1


@pytest.mark.parametrize(
    "body",
    [TimeoutNow(INT64_MAX), RequestVote(INT64_MAX, INT64_MAX, INT64_MAX)],
    ids=["timeout-now", "request-vote"],
)
def test_a_peer_naming_the_largest_term_never_makes_a_replica_raise(body: object) -> None:
    net = LeaderNet()
    net.run_for(500)
    net.crash("n1")
    net.crash("n3")
    net.run_for(1500)  # n2 stops hearing from its leader: no lease keeps it from taking a vote request
    # Node traffic from a member of the group (a buggy or corrupted peer), then time for n2 to campaign.
    net.step("n2", Message("n1", "n2", NODE_PARTITION, RaftBatch(((P, body),))))
    net.run_for(3000)
    assert net.replica("n2").term <= INT64_MAX


def test_a_committed_entry_whose_command_does_not_decode_never_makes_a_node_raise() -> None:
    net = LeaderNet()
    net.run_for(500)
    follower = net.replica("n2")
    last = net.nodes["n2"].storage.log(P).bounds().last_index
    # The leader of n2's term sends an entry it cannot have made (a bug, another version) and commits it.
    junk = LogEntry(last + 1, follower.term, b"\x01not a command")
    append = AppendEntries(follower.term, last, follower.term, (junk,), last + 1)
    net.step("n2", Message("n1", "n2", NODE_PARTITION, RaftBatch(((P, append),))))
    assert follower.applied <= last + 1


def test_a_read_at_a_leader_that_steps_down_is_answered_within_the_request_timeout() -> None:
    net = LeaderNet(cfg=leader_config(timeouts=NO_SPREAD))
    net.run_for(500)
    assert net.leader() == "n1"
    timeout_ms = net.cfg.timeouts.request_timeout_ms
    net.partition("n1")
    submitted_ms = net.now
    rid = net.submit("n1", GetOp("k", "read-index"))
    # The read waits for a heartbeat round nobody answers; check-quorum steps n1 down within two election
    # timeouts, and the read is redirected with no leader known.
    while rid not in net.replies and net.now - submitted_ms <= 3 * timeout_ms:
        net.run_for(10)
    answered_ms = net.now
    assert rid in net.replies
    assert answered_ms - submitted_ms <= timeout_ms + 10, (answered_ms - submitted_ms, net.replies[rid])


def test_a_node_removed_restarted_and_added_again_holds_every_record_its_log_applied() -> None:
    net = LeaderNet(cfg=membership_config(("n1", "n2", "n3", "n4")))
    net.run_for(1000)
    written = write(net, 24)
    net.step("n2", SetMember("n4", LEAVING))
    net.run_for(20_000)
    assert not net.nodes["n4"].replicas
    net.crash("n4")
    net.boot("n4")  # its map gives it no partition: it clears their records at start
    net.run_for(1000)
    net.step("n1", SetMember("n4", ACTIVE, net.cfg.address_text("n4")))
    net.run_for(30_000)
    the_map = net.nodes["n1"].partition_map
    assert_groups_match_the_map(net, ("n1", "n2", "n3", "n4"))
    assert_copies_equal(net, dict(enumerate(the_map.replicas)))
    # n4's own copy serves a stale read: it holds every acknowledged write of the partitions it holds again.
    held_by_n4 = {k: v for k, v in written.items() if the_map.partition_for_key(k) in net.nodes["n4"].replicas}
    assert held_by_n4
    assert {k: net.call("n4", GetOp(k, "stale")) for k in held_by_n4} == {
        k: Found(k, v, dict(net.nodes["n1"].storage.copy_of(the_map.partition_for_key(k)))[k].version)
        for k, v in held_by_n4.items()
    }


def test_a_node_cut_off_while_it_is_added_learns_its_groups_once_the_network_heals() -> None:
    net = LeaderNet(cfg=membership_config(("n1", "n2", "n3")))
    net.run_for(1000)
    write(net, 8)
    net.partition("n4")
    net.step("n1", SetMember("n4", ACTIVE, net.cfg.address_text("n4")))
    net.run_for(10_000)
    assert any("n4" in replicas for replicas in net.nodes["n1"].partition_map.replicas)
    net.heal()
    net.run_for(30_000)
    assert_groups_match_the_map(net, ("n1", "n2", "n3", "n4"))
