"""Leaderless mode through real nodes: acknowledged writes survive power loss of a minority of their replicas
under ``fsync = "batch"`` and ``"always"`` (the acks are durable effects), dots never repeat after a restart,
and tombstones: purged once every replica holds one past the grace period, never while a replica missed the
delete, and the key never comes back through repair, handoff or anti-entropy."""

from __future__ import annotations

import pytest

from kvstore.messages import DeleteOp, GetOp, PutOp
from tests.protocol.leaderless_node_net import (
    LeaderlessNet,
    found,
    leaderless_config,
    outsider_key,
    stored,
)

GRACE_MS = 500
SWEEP_MS = 1000  # LeaderlessSettings.sweep_interval_ms


def net_of(fsync: str = "batch", **leaderless: object) -> LeaderlessNet:
    options: dict[str, object] = {"handoff_interval_ms": 500, "anti_entropy_interval_ms": 1000,
                                  "tombstone_grace_ms": GRACE_MS}
    options.update(leaderless)
    return LeaderlessNet(cfg=leaderless_config(fsync=fsync, **options))





# ---------------------------------------------------------------- durability


@pytest.mark.parametrize("fsync", ["batch", "always"])
@pytest.mark.parametrize("victim", [0, 1, 2])
def test_an_acknowledged_write_survives_power_loss_of_any_one_of_its_replicas(fsync: str, victim: int) -> None:
    net = net_of(fsync)
    key, pref, outsider = outsider_key(net)
    assert stored(net.request(outsider, PutOp(key, b"v", w="quorum"))).acks >= 2
    # No quiet time: the crash comes right after the answer, with whatever was in flight lost with it.
    net.queue.clear()
    net.power_loss(pref[victim])
    assert found(net.request(outsider, GetOp(key, r="all"))).values == (b"v",)


@pytest.mark.parametrize("fsync", ["batch", "always"])
def test_the_acks_a_write_counted_are_on_disk_when_it_is_answered(fsync: str) -> None:
    net = net_of(fsync)
    key, pref, _ = outsider_key(net)
    result = stored(net.request(pref[0], PutOp(key, b"v", w="all")))
    assert result.acks == 3
    for node in pref:
        durable = net.durable_state(node, key)
        assert durable is not None and durable.values == (b"v",), node


@pytest.mark.parametrize("fsync", ["batch", "always"])
def test_dots_never_repeat_after_a_power_loss(fsync: str) -> None:
    net = net_of(fsync)
    key, pref, _ = outsider_key(net)
    coordinator = pref[0]
    # w=1: answered by the coordinator alone; its peers' copies are still in flight when the power goes.
    stored(net.request(coordinator, PutOp(key, b"before", w="1")))
    in_flight = list(net.queue)
    net.queue.clear()
    net.power_loss(coordinator)
    stored(net.request(coordinator, PutOp(key, b"after", w="1")))
    net.queue.extend(in_flight)  # the old copies arrive late: they must not collide with the new write
    net.run_for(100)
    got = found(net.request(pref[1], GetOp(key, r="all")))
    assert sorted(got.values) == [b"after", b"before"]
    state = net.state(coordinator, key)
    assert state is not None
    dots = [s.dot for s in state.siblings]
    assert len(set(dots)) == len(dots) == 2


# ---------------------------------------------------------------- tombstones


def deleted_everywhere(net: LeaderlessNet, key: str, nodes: tuple[str, ...]) -> bool:
    return all((s := net.state(n, key)) is not None and s.deleted for n in nodes)


def test_a_tombstone_held_by_every_replica_is_purged_after_the_grace_period() -> None:
    net = net_of()
    key, pref, outsider = outsider_key(net)
    stored(net.request(outsider, PutOp(key, b"v")))
    got = found(net.request(outsider, GetOp(key)))
    stored(net.request(outsider, DeleteOp(key, context=got.context, w="all")))
    assert deleted_everywhere(net, key, pref)
    net.run_for(GRACE_MS // 2)
    assert deleted_everywhere(net, key, pref)  # within the grace period: kept
    net.run_for(GRACE_MS + 2 * SWEEP_MS)
    assert all(net.state(n, key) is None for n in pref)
    assert found(net.request(outsider, GetOp(key, r="all"))).values == ()
    # The purge is durable where it happened: nothing comes back after power losses and more quiet time.
    for node in pref:
        net.power_loss(node)
    net.run_for(3 * SWEEP_MS)
    assert found(net.request(outsider, GetOp(key, r="all"))).values == ()


@pytest.mark.parametrize("anti_entropy", [True, False])
def test_a_replica_that_missed_the_delete_blocks_the_purge_until_it_holds_the_tombstone(anti_entropy: bool) -> None:
    net = net_of(sloppy=False, anti_entropy=anti_entropy)
    key, pref, outsider = outsider_key(net)
    stored(net.request(outsider, PutOp(key, b"v", w="all")))
    lagging = pref[2]
    net.isolate(lagging)
    got = found(net.request(pref[0], GetOp(key, r="2")))
    stored(net.request(pref[0], DeleteOp(key, context=got.context, w="2")))
    net.run_for(GRACE_MS + 3 * SWEEP_MS)
    # Still cut off: its old value blocks the purge, and the others keep their tombstones.
    assert deleted_everywhere(net, key, pref[:2])
    assert net.values_on(lagging, key) == {b"v"}
    net.heal()
    if not anti_entropy:
        net.run_for(3 * SWEEP_MS)
        assert net.values_on(lagging, key) == {b"v"}
        assert deleted_everywhere(net, key, pref[:2])
        # A read repairs it with the tombstone (and the old value does not come back to the others).
        assert found(net.request(outsider, GetOp(key, r="all"))).values == ()
    net.run_for(GRACE_MS + 4 * SWEEP_MS)
    assert all(net.state(n, key) is None for n in pref)
    net.run_for(4 * SWEEP_MS)
    assert all(net.state(n, key) is None for n in pref)
    assert found(net.request(lagging, GetOp(key, r="all"))).values == ()


def test_a_delete_handed_off_to_a_returning_replica_is_purged_and_its_old_value_never_comes_back() -> None:
    grace_ms = 3000  # long enough for the hint to outlive the lagging replica's downtime
    net = net_of(anti_entropy=False, tombstone_grace_ms=grace_ms)
    key, pref, fallback = outsider_key(net)
    stored(net.request(pref[0], PutOp(key, b"v", w="all")))
    lagging = pref[2]
    net.stop(lagging)  # it holds the value durably
    got = found(net.request(pref[0], GetOp(key, r="2")))
    stored(net.request(pref[0], DeleteOp(key, context=got.context, w="all")))
    assert len(net.hints(fallback)) == 1  # the tombstone, for the lagging replica
    # Back within the hint's life (a hint expires after the grace period, so that none outlives a purge).
    net.run_for(grace_ms // 3)
    assert deleted_everywhere(net, key, pref[:2])
    net.restart(lagging)
    assert net.values_on(lagging, key) == {b"v"}
    net.run_for(grace_ms + 5 * SWEEP_MS)
    assert net.hints(fallback) == []
    assert all(net.state(n, key) is None for n in pref)
    assert found(net.request(fallback, GetOp(key, r="all"))).values == ()


def test_a_hint_of_the_old_value_handed_off_after_the_purge_does_not_bring_the_key_back() -> None:
    net = net_of(anti_entropy=False)
    key, pref, fallback = outsider_key(net)
    lagging = pref[2]
    net.stop(lagging)
    stored(net.request(pref[0], PutOp(key, b"v", w="all")))
    assert len(net.hints(fallback)) == 1  # the value, for the lagging replica
    net.stop(fallback)  # with its hint on disk
    net.restart(lagging)
    net.run_for(1500)  # the coordinator's suspicion of it ends
    got = found(net.request(pref[0], GetOp(key, r="all")))
    stored(net.request(pref[0], DeleteOp(key, context=got.context, w="all")))
    net.run_for(GRACE_MS + 3 * SWEEP_MS)
    assert all(net.state(n, key) is None for n in pref)  # purged: every replica held the tombstone
    net.restart(fallback)
    net.run_for(6000)
    assert net.hints(fallback) == []
    assert found(net.request(pref[0], GetOp(key, r="all"))).values == ()
    assert all(net.values_on(n, key) == set() for n in pref)


@pytest.mark.parametrize("lags", [0, 2])  # the purge's coordinator (the first replica), or a voter
def test_a_tombstone_brought_by_anti_entropy_is_on_disk_before_the_purge_counts_on_it(lags: int) -> None:
    net = net_of(sloppy=False)
    key, pref, outsider = outsider_key(net)
    stored(net.request(outsider, PutOp(key, b"v", w="all")))
    lagging = pref[lags]
    net.isolate(lagging)
    got = found(net.request(pref[1], GetOp(key, r="2")))
    stored(net.request(pref[1], DeleteOp(key, context=got.context, w="2")))
    net.heal()
    # Anti-entropy alone brings the tombstone (its messages are not durable), then the purge runs everywhere.
    net.run_until(lambda: all(net.state(n, key) is None for n in pref))
    net.power_loss(lagging)
    net.run_for(GRACE_MS + 4 * SWEEP_MS)
    assert all(net.values_on(n, key) == set() for n in pref)
    assert found(net.request(outsider, GetOp(key, r="all"))).values == ()
