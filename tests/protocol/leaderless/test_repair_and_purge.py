"""Read repair (async and sync) and the purge of tombstones past their grace period."""

from __future__ import annotations

from leaderless_env import Cluster

from replication import dvv
from replication.dvv import Versions
from replication.leaderless import KeyStored, KeyValues, LeaderlessSettings, LocalScan
from replication.leaderless_messages import (
    KeyReadReply,
    KeyWriteAck,
    KeyWriteRequest,
    PurgeCheck,
    PurgeKey,
    PurgeVote,
)
from replication.replica import PeerMessage
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3", "n4")
GRACE_MS = 5_000


def cluster() -> Cluster:
    return Cluster(NODES, LeaderlessSettings(replicas=3, tombstone_grace_ms=GRACE_MS, request_timeout_ms=500))


def write_missing_n3(c: Cluster, key: str, value: bytes | None, context: VectorClock | None = None) -> Versions:
    token = c.write("n1", key, value, w=2, context=context)
    c.inflight = [e for e in c.inflight if e.dst != "n3"]
    c.deliver_all()
    result = c.result("n1", token)
    assert isinstance(result, KeyStored)
    return result.state


def read_answer(c: Cluster, node: str, token: int) -> KeyValues:
    result = c.result(node, token)
    assert isinstance(result, KeyValues), result
    return result


# ---------------------------------------------------------------- read repair


def test_async_repair_answers_at_r_then_repairs_the_stale_replica() -> None:
    c = cluster()
    state = write_missing_n3(c, "k", b"v")
    assert "k" not in c.stores["n3"].states
    token = c.read("n1", "k", r=2)
    c.deliver(0)  # the request to n2
    c.deliver(1)  # n2's reply, before n3's request got anywhere
    assert read_answer(c, "n1", token) == KeyValues("k", state, 2)
    c.deliver_all()
    repairs = [e for e in c.sent if isinstance(e.body, KeyWriteRequest) and e.src == "n1" and e.dst == "n3"]
    assert len(repairs) == 2  # the write (dropped) and the repair
    assert c.stores["n3"].states["k"] == state


def test_the_coordinator_repairs_its_own_copy() -> None:
    c = cluster()
    state = write_missing_n3(c, "k", b"v")
    token = c.read("n3", "k", r=3)
    c.deliver_all()
    assert read_answer(c, "n3", token).state == state
    assert c.stores["n3"].states["k"] == state
    assert not [e for e in c.sent if isinstance(e.body, KeyWriteRequest) and e.src == "n3"]  # n1, n2 were current


def test_sync_repair_answers_once_the_stale_replica_acknowledged() -> None:
    c = cluster()
    state = write_missing_n3(c, "k", b"v")
    token = c.read("n1", "k", r=2, repair="sync")
    for _ in range(4):  # both requests and both replies
        c.deliver(0)
    assert c.result("n1", token) is None
    assert [(e.dst, type(e.body)) for e in c.inflight] == [("n3", KeyWriteRequest)]
    c.deliver(0)
    assert c.result("n1", token) is None  # the repair's ack is on its way
    assert [type(e.body) for e in c.inflight] == [KeyWriteAck]
    c.deliver(0)
    assert read_answer(c, "n1", token) == KeyValues("k", state, 3)


def test_sync_repair_answers_at_the_timeout_with_what_it_has() -> None:
    c = cluster()
    state = write_missing_n3(c, "k", b"v")
    token = c.read("n1", "k", r=2, repair="sync")
    for _ in range(4):
        c.deliver(0)
    c.drop(0)  # the repair is lost
    c.advance(500)
    assert read_answer(c, "n1", token) == KeyValues("k", state, 3)


def test_a_read_short_of_r_times_out_definitely() -> None:
    c = cluster()
    c.cut.add(frozenset(("n1", "n2")))
    c.cut.add(frozenset(("n1", "n3")))
    token = c.read("n1", "k", r=2)
    c.deliver_all()
    c.advance(500)
    result = c.result("n1", token)
    assert result is not None and getattr(result, "reason", None) == "timeout" and getattr(result, "definite", None)


# ---------------------------------------------------------------- tombstones


def delete_everywhere(c: Cluster, key: str) -> Versions:
    token = c.write("n1", key, b"v", w=3)
    c.deliver_all()
    written = c.result("n1", token)
    assert isinstance(written, KeyStored)
    token = c.write("n2", key, None, w=3, context=written.state.context)
    c.deliver_all()
    deleted = c.result("n2", token)
    assert isinstance(deleted, KeyStored) and deleted.state.deleted
    return deleted.state


def test_tombstones_are_purged_only_past_the_grace_period_by_the_first_preference_node() -> None:
    c = cluster()
    delete_everywhere(c, "k")
    c.advance(GRACE_MS - 1_000)
    assert not [e for e in c.sent if isinstance(e.body, PurgeCheck)]
    c.advance(1_000)
    checks = [e for e in c.sent if isinstance(e.body, PurgeCheck)]
    assert {(e.src, e.dst) for e in checks} == {("n1", "n2"), ("n1", "n3")}
    c.deliver_all()
    assert all("k" not in c.stores[n].states for n in NODES)
    token = c.read("n2", "k", r=3)
    c.deliver_all()
    assert read_answer(c, "n2", token) == KeyValues("k", None, 3)


def test_a_replica_that_missed_the_delete_blocks_the_purge_until_repaired() -> None:
    c = cluster()
    token = c.write("n1", "k", b"v", w=3)
    c.deliver_all()
    written = c.result("n1", token)
    assert isinstance(written, KeyStored)
    tombstone = write_missing_n3(c, "k", None, context=written.state.context)
    assert c.stores["n3"].states["k"].values == (b"v",)
    c.advance(GRACE_MS)
    c.deliver_all()
    votes = [e.body for e in c.sent if isinstance(e.body, PurgeVote)]
    assert sorted(v.holds for v in votes) == [False, True]
    assert c.stores["n1"].states["k"] == tombstone and c.stores["n2"].states["k"] == tombstone
    # The value must not come back: a read merges it away and repairs n3.
    read = c.read("n2", "k", r=3)
    c.deliver_all()
    answer = read_answer(c, "n2", read).state
    assert answer is not None and answer.deleted
    assert c.stores["n3"].states["k"] == tombstone
    c.advance(1_000)
    c.deliver_all()
    assert all("k" not in c.stores[n].states for n in NODES)


def test_purge_key_spares_a_state_written_since_the_check() -> None:
    c = cluster()
    tombstone = delete_everywhere(c, "k")
    c.advance(GRACE_MS)
    c.deliver(0)
    c.deliver(0)  # both checks delivered; the votes wait
    newer = c.write("n2", "k", b"again", w=1, context=tombstone.context)
    c.inflight = [e for e in c.inflight if not isinstance(e.body, KeyWriteRequest)]
    c.deliver_all()
    assert "k" not in c.stores["n1"].states and "k" not in c.stores["n3"].states
    assert c.stores["n2"].states["k"].values == (b"again",)
    result = c.result("n2", newer)
    assert isinstance(result, KeyStored) and result.state.values == (b"again",)


def test_purge_checks_with_a_context_that_differs_or_does_not_decode_vote_no() -> None:
    c = cluster()
    tombstone = delete_everywhere(c, "k")
    other = dvv.encode_context(tombstone.context.increment("n9"))
    for context in (other, b"\xc1", b"\x93\x01"):
        effects = c.replicas["n2"].step(c.now_ms, PeerMessage("n1", PurgeCheck(9, "k", context)))
        assert [e.body for e in effects] == [PurgeVote(9, "k", False)]  # type: ignore[union-attr]
        c.replicas["n2"].step(c.now_ms, PeerMessage("n1", PurgeKey("k", context)))
    assert c.stores["n2"].states["k"] == tombstone


def test_a_purge_blocked_by_an_unreachable_replica_waits() -> None:
    c = cluster()
    delete_everywhere(c, "k")
    c.down.add("n3")
    c.advance(GRACE_MS)
    c.deliver_all()
    assert all("k" in c.stores[n].states for n in ("n1", "n2", "n3"))


# ---------------------------------------------------------------- scan


def test_scan_lists_live_local_states_in_range() -> None:
    c = cluster()
    for key in ("a", "b", "c", "d"):
        c.write("n1", key, key.encode(), w=1)
    c.write("n1", "b", None, w=1, context=c.stores["n1"].states["b"].context)
    scan = c.replicas["n1"].scan(c.now_ms, "a", "d", 10)
    assert [k for k, _ in scan.items] == ["a", "c"] and not scan.truncated
    scan = c.replicas["n1"].scan(c.now_ms, "", None, 2)
    assert scan == LocalScan((("a", c.stores["n1"].states["a"]), ("c", c.stores["n1"].states["c"])), True)
    assert c.replicas["n2"].scan(c.now_ms, "", None, 10) == LocalScan((), False)


def test_replies_after_the_read_finished_change_nothing() -> None:
    c = cluster()
    token = c.read("n1", "k", r=1)
    c.deliver_all()
    assert read_answer(c, "n1", token) == KeyValues("k", None, 1)
    forged = dvv.encode(Versions((dvv.Sibling(("n2", 1), b"x", 1),), VectorClock.of({"n2": 1})))
    c.step("n1", PeerMessage("n2", KeyReadReply(1, "k", forged)))
    assert "k" not in c.stores["n1"].states
