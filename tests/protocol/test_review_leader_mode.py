"""Review of leader mode at the node: odd peer input, held ops, snapshots. Driven by hand, deterministic.

Each xfail here is a bug the review found; the test asserts the right behaviour and passes once it is fixed.
"""

from __future__ import annotations

import pytest

from kvstore.messages import Found, Message, RaftSnapshotPart, SnapshotPoint
from partitioning.stream import StreamChunk
from tests.protocol.test_node_raft_snapshots import Net as SnapshotNet
from tests.protocol.test_node_leader import P


@pytest.mark.xfail(
    strict=True,
    reason="raft_snapshots._install compares point.term < 0 without checking its type: "
    "a SnapshotPoint whose term is not an int raises TypeError out of Node.step",
)
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
