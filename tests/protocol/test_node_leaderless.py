"""Leaderless mode through real ``Node``s on simulated disks (``leaderless_node_net.LeaderlessNet``): quorum
reads and writes through any node, siblings and contexts, deletes, sloppy quorums with hinted handoff kept in
the fallback's metadata, and anti-entropy on its own (no reads, so no read repair)."""

from __future__ import annotations

from kvstore.errors import ErrorCode
from kvstore.messages import DeleteOp, Failure, GetOp, Message, PutOp, ScanOp, ScanPage
from replication.leaderless_messages import HandoffAck
from tests.protocol.leaderless_node_net import (
    LeaderlessNet,
    found,
    keys_with,
    leaderless_config,
    outsider_key,
    stored,
)

HANDOFF_MS = 500
AE_MS = 1000


def net_of(**leaderless: object) -> LeaderlessNet:
    options: dict[str, object] = {"handoff_interval_ms": HANDOFF_MS, "anti_entropy_interval_ms": AE_MS}
    options.update(leaderless)
    return LeaderlessNet(cfg=leaderless_config(**options))





# ---------------------------------------------------------------- quorums, siblings, deletes


def test_quorum_writes_and_reads_through_any_node_reach_every_replica() -> None:
    net = net_of()
    key, pref, outsider = outsider_key(net)
    # The outsider holds no replica: it forwards to one that coordinates.
    assert stored(net.request(outsider, PutOp(key, b"v1"))).acks >= 2
    for node in net.cfg.node_ids:
        got = found(net.request(node, GetOp(key)))
        assert got.values == (b"v1",)
    net.run_for(100)
    for node in pref:
        assert net.values_on(node, key) == {b"v1"}
    assert net.state(outsider, key) is None
    assert net.hints(outsider) == []


def test_a_node_that_holds_no_replica_stops_forwarding_to_a_silent_one_and_uses_the_others() -> None:
    net = net_of(anti_entropy=False)
    net.refuse_down = False  # its messages are lost: no refusal tells that it is gone
    key, pref, outsider = outsider_key(net)
    net.stop(pref[0])
    first = net.request(outsider, PutOp(key, b"v1"))
    assert isinstance(first, Failure) and first.code == ErrorCode.TIMEOUT, first
    # Every later op goes to another replica, which coordinates it with the third.
    got = found(net.request(outsider, GetOp(key)))
    assert stored(net.request(outsider, PutOp(key, b"v2", context=got.context))).acks == 2
    assert found(net.request(outsider, GetOp(key))).values == (b"v2",)
    # A scan's part for that partition goes to another replica too (each replica serves its own copy).
    scan = net.request(outsider, ScanOp("", None, 100))
    assert isinstance(scan, ScanPage) and (key, b"v2") in [(i.key, i.value) for i in scan.items], scan
    # Once it answers again it is asked again.
    net.restart(pref[0])
    net.refuse_down = True
    net.step(outsider, Message(pref[0], outsider, 0, HandoffAck(1)))  # any message from it
    assert net.nodes[outsider]._leaderless is not None
    assert net.nodes[outsider]._leaderless.route(pref, net.now) == pref[0]


def test_blind_writes_through_two_nodes_become_siblings_and_a_write_with_the_context_supersedes_them() -> None:
    net = net_of()
    key, pref, outsider = outsider_key(net)
    stored(net.request(pref[0], PutOp(key, b"a")))
    stored(net.request(pref[1], PutOp(key, b"b")))
    got = found(net.request(outsider, GetOp(key, r="all")))
    assert sorted(got.values) == [b"a", b"b"]
    # A third blind write adds a sibling; a write with the read's context supersedes exactly what it saw.
    stored(net.request(pref[2], PutOp(key, b"c")))
    stored(net.request(pref[1], PutOp(key, b"resolved", context=got.context)))
    net.run_for(100)
    for node in pref:
        assert net.values_on(node, key) == {b"c", b"resolved"}, node
    again = found(net.request(pref[0], GetOp(key, r="all")))
    assert sorted(again.values) == [b"c", b"resolved"]
    stored(net.request(outsider, PutOp(key, b"one", context=again.context)))
    net.run_for(100)
    for node in pref:
        assert net.values_on(node, key) == {b"one"}, node


def test_a_delete_with_the_context_leaves_a_tombstone_on_every_replica_and_the_key_reads_absent() -> None:
    net = net_of()
    key, pref, outsider = outsider_key(net)
    stored(net.request(pref[0], PutOp(key, b"v")))
    got = found(net.request(outsider, GetOp(key)))
    stored(net.request(pref[2], DeleteOp(key, context=got.context)))
    net.run_for(100)
    for node in net.cfg.node_ids:
        assert found(net.request(node, GetOp(key, r="all"))).values == ()
    for node in pref:
        state = net.state(node, key)
        assert state is not None and state.deleted, node
    # A blind delete of a key never written is a tombstone too, and reads absent.
    other = keys_with(net, lambda _p, pref: "n1" in pref, 2)[1]
    stored(net.request("n1", DeleteOp(other)))
    assert found(net.request("n2", GetOp(other))).values == ()


def test_a_write_short_of_its_quorum_fails_indefinitely_and_leaves_a_sibling() -> None:
    net = net_of(sloppy=False)
    key, pref, _ = outsider_key(net)
    net.stop(pref[1])
    net.stop(pref[2])
    # The coordinator stored it before it learnt that its peers are down: it may have happened.
    first = net.request(pref[0], PutOp(key, b"v", w="2"))
    assert isinstance(first, Failure) and first.code == ErrorCode.TIMEOUT, first
    # One replica is enough for r=1 and w=1; the indefinite write is there, as a sibling.
    stored(net.request(pref[0], PutOp(key, b"w", w="1")))
    assert found(net.request(pref[0], GetOp(key, r="1"))).values == (b"v", b"w")


# ---------------------------------------------------------------- sloppy quorum and hinted handoff


def test_a_write_for_a_crashed_replica_is_kept_as_a_durable_hint_and_handed_off_when_it_returns() -> None:
    net = net_of()
    key, pref, fallback = outsider_key(net)
    missing = pref[2]
    net.stop(missing)
    # w=all: the fallback's acknowledgement counts in place of the missing replica's.
    assert stored(net.request(pref[0], PutOp(key, b"v", w="all"))).acks == 3
    assert len(net.hints(fallback)) == 1
    assert net.state(fallback, key) is None  # a hint, not a replica's record
    # The ack was durable: the hint survives the fallback's power loss.
    net.power_loss(fallback)
    assert len(net.hints(fallback)) == 1
    net.run_for(3 * HANDOFF_MS)
    assert len(net.hints(fallback)) == 1  # the target is still down: the hint waits
    net.restart(missing)
    net.run_for(3 * HANDOFF_MS)
    assert net.values_on(missing, key) == {b"v"}
    assert net.hints(fallback) == []
    # The handoff's ack was durable at the target: its copy survives its power loss.
    net.power_loss(missing)
    assert net.values_on(missing, key) == {b"v"}


def test_a_replica_whose_messages_are_dropped_gets_its_writes_through_a_fallback() -> None:
    net = net_of(anti_entropy=False)
    net.refuse_down = False
    key, pref, fallback = outsider_key(net)
    missing = pref[2]
    net.stop(missing)
    # Answered by a quorum of two; the silent replica's copy goes to the fallback once the write times out.
    assert stored(net.request(pref[0], PutOp(key, b"v", w="2"))).acks == 2
    assert net.hints(fallback) == []
    net.run_for(2500)
    assert len(net.hints(fallback)) == 1
    net.restart(missing)
    # The handoffs sent while it was down were lost, not refused: they go again after the resend delay (5 s).
    net.run_for(6000)
    assert net.values_on(missing, key) == {b"v"}
    assert net.hints(fallback) == []


def test_with_hinted_handoff_off_the_hint_stays_on_the_fallback() -> None:
    net = net_of(hinted_handoff=False, anti_entropy=False)
    key, pref, fallback = outsider_key(net)
    net.stop(pref[2])
    assert stored(net.request(pref[0], PutOp(key, b"v", w="all"))).acks == 3
    net.restart(pref[2])
    net.run_for(10 * HANDOFF_MS)
    assert len(net.hints(fallback)) == 1
    assert net.state(pref[2], key) is None


def test_a_full_hint_store_refuses_and_the_write_fails_short_of_its_quorum() -> None:
    net = net_of(max_hints=1, anti_entropy=False)
    key, pref, fallback = outsider_key(net)
    second = keys_with(net, lambda _p, p: p == pref and True, 2)[1]
    net.stop(pref[2])
    assert stored(net.request(pref[0], PutOp(key, b"v", w="all"))).acks == 3
    refused = net.request(pref[0], PutOp(second, b"w", w="all"))
    # It reached two replicas but not a third: indefinite (it may be stored), never acknowledged.
    assert isinstance(refused, Failure) and refused.code == ErrorCode.TIMEOUT, refused
    assert len(net.hints(fallback)) == 1
    # A quorum of two still takes writes.
    assert stored(net.request(pref[0], PutOp(second, b"x", w="2"))).acks == 2


# ---------------------------------------------------------------- anti-entropy


def missed_writes(anti_entropy: bool) -> tuple[LeaderlessNet, list[str], str, tuple[str, ...]]:
    """Writes of keys while one replica of theirs is cut off (no hints: sloppy quorums are off), then healed."""
    net = net_of(sloppy=False, anti_entropy=anti_entropy, hinted_handoff=False)
    keys = keys_with(net, lambda _p, pref: pref[0] == "n1", 6)
    _, pref = net.placement(keys[0])
    keys = [k for k in keys if net.placement(k)[1] == pref]
    lagging = pref[2]
    net.isolate(lagging)
    for i, key in enumerate(keys):
        stored(net.request(pref[i % 2], PutOp(key, b"v%d" % i, w="2")))
    net.heal()
    return net, keys, lagging, pref


def test_a_replica_that_missed_writes_converges_by_anti_entropy_alone() -> None:
    net, keys, lagging, pref = missed_writes(anti_entropy=True)
    assert all(net.state(lagging, k) is None for k in keys)
    net.run_for(5 * AE_MS)
    for i, key in enumerate(keys):
        assert net.values_on(lagging, key) == {b"v%d" % i}, key
        assert net.state(lagging, key) == net.state(pref[0], key)
    assert net.nodes[lagging]._leaderless is not None
    stats = [net.nodes[n]._leaderless.stats for n in pref]  # type: ignore[union-attr]
    assert sum(s.read_repairs for s in stats) == 0
    assert sum(s.ae_keys_repaired for s in stats) >= len(keys)


def test_without_anti_entropy_a_replica_that_missed_writes_stays_behind() -> None:
    net, keys, lagging, _ = missed_writes(anti_entropy=False)
    net.run_for(5 * AE_MS)
    assert all(net.state(lagging, k) is None for k in keys)


def test_a_read_with_sync_repair_answers_once_the_stale_replica_holds_the_merged_state() -> None:
    net = net_of(sloppy=False, anti_entropy=False)
    key, pref, _ = outsider_key(net)
    net.isolate(pref[2])
    stored(net.request(pref[0], PutOp(key, b"v", w="2")))
    net.heal()
    net.run_for(1500)  # suspicions end
    assert net.state(pref[2], key) is None
    request_id = net.submit(pref[0], GetOp(key, r="all", repair="sync"))
    net.run_until(lambda: request_id in net.replies)
    assert found(net.replies.pop(request_id)).values == (b"v",)
    assert net.values_on(pref[2], key) == {b"v"}  # before anything else ran
    assert net.durable_state(pref[2], key) is not None  # the repair's ack was durable


def test_blind_writes_past_max_siblings_are_refused_until_a_write_resolves_them() -> None:
    net = net_of(max_siblings=3)
    key, pref, outsider = outsider_key(net)
    for i in range(3):
        stored(net.request(pref[i % 3], PutOp(key, b"v%d" % i, w="all")))
    refused = net.request(outsider, PutOp(key, b"more", w="all"))
    assert isinstance(refused, Failure) and refused.code == ErrorCode.PRECONDITION_FAILED, refused
    got = found(net.request(outsider, GetOp(key, r="all")))
    assert sorted(got.values) == [b"v0", b"v1", b"v2"]
    stored(net.request(outsider, PutOp(key, b"resolved", context=got.context, w="all")))
    assert found(net.request(pref[2], GetOp(key, r="all"))).values == (b"resolved",)
