"""SimCluster.join and SimCluster.leave: spares admitted at run time take their share of partitions, a drained
node ends removed and empty, no key is lost on the way, and the same seed replays the same trace."""

from __future__ import annotations

import pytest

from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.membership import SLACK_PARTITIONS
from kvstore.messages import Found, GetOp, PutOp, Written
from kvstore.sim.cluster import SimCluster
from partitioning.partition_map import ACTIVE, LEAVING, REMOVED

SEED = 23
PARTITIONS = 16
KEYS = 48
# Long enough for every rebalancer (one look a second) to move what it owns, a few moves at a time.
SETTLE_MS = 30_000


def founders_config(nodes: int = 5, founders: int = 3) -> ClusterConfig:
    config = local_cluster(nodes, partitions=PARTITIONS, storage=StorageConfig(engine="memory", fsync="always"))
    return config.replace(initial_nodes=config.node_ids[:founders])


def write_keys(cluster: SimCluster, count: int = KEYS) -> dict[str, bytes]:
    written = {}
    nodes = cluster.node_ids()
    for i in range(count):
        key, value = f"key{i}", f"value{i}".encode()
        # Through every node, spares included: they forward to the owners.
        assert isinstance(cluster.request(nodes[i % len(nodes)], PutOp(key, value)), Written)
        written[key] = value
    return written


def read_back(cluster: SimCluster, written: dict[str, bytes]) -> None:
    nodes = cluster.node_ids()
    for i, (key, value) in enumerate(sorted(written.items())):
        found = cluster.request(nodes[i % len(nodes)], GetOp(key))
        assert isinstance(found, Found) and found.value == value, (key, found)


def settle(cluster: SimCluster) -> None:
    """Run until every node has one map, where its rebalancer wants it, with no move running and no node
    left leaving (a drained one is marked removed)."""
    cluster.run_for(50)  # the orders reach their nodes (pushed at the current instant)

    def quiet() -> bool:
        nodes = [cluster.node(n) for n in cluster.node_ids()]
        first = nodes[0].partition_map
        leaving = any(m.state == LEAVING for m in first.roster)
        return not leaving and all(n.balanced and n.partition_map == first for n in nodes)

    cluster.run_until_true(quiet, SETTLE_MS, "balanced")
    cluster.run_until_idle()


def assert_one_balanced_map(cluster: SimCluster, active: tuple[str, ...]) -> None:
    maps = {n: cluster.node(n).partition_map for n in cluster.node_ids()}
    first = maps["n1"]
    assert all(m == first for m in maps.values()), {n: m.epoch for n, m in maps.items()}
    assert first.active == active
    share = PARTITIONS / len(active)
    owned = {n: len(first.owned_by(n)) for n in active}
    assert sum(owned.values()) == PARTITIONS
    assert all(abs(count - share) <= SLACK_PARTITIONS for count in owned.values()), owned
    # Every node serves exactly what the map gives it, and nothing else.
    for node_id in cluster.node_ids():
        assert sorted(cluster.node(node_id).replicas) == list(first.partitions_of(node_id))


def test_spares_hold_nothing_until_they_join_and_then_take_their_share() -> None:
    cluster = SimCluster(SEED, founders_config())
    cluster.run_for(100)
    view = cluster.view()
    assert view is not None and view.active == ("n1", "n2", "n3")
    assert not cluster.node("n4").replicas and not cluster.node("n5").replicas
    written = write_keys(cluster)
    assert cluster.storage("n4").partitions() == [] and cluster.storage("n5").partitions() == []

    assert cluster.join("n4") == "active n4 at 127.0.0.1:7004 (ordered at n1)"
    assert cluster.join("n5") == "active n5 at 127.0.0.1:7005 (ordered at n1)"
    settle(cluster)

    assert_one_balanced_map(cluster, ("n1", "n2", "n3", "n4", "n5"))
    final = cluster.node("n1").partition_map
    assert final.member("n4") is not None and final.member("n4").address == "127.0.0.1:7004"  # type: ignore[union-attr]
    assert len(final.owned_by("n4")) >= 2 and len(final.owned_by("n5")) >= 2
    # The joiners' partitions came with their data.
    assert cluster.storage("n4").partitions() and cluster.storage("n5").partitions()
    read_back(cluster, written)


def test_a_leaving_node_gives_everything_away_and_ends_removed() -> None:
    cluster = SimCluster(SEED, founders_config())
    cluster.run_for(100)
    cluster.join("n4")
    cluster.join("n5")
    settle(cluster)
    written = write_keys(cluster)
    held_before = cluster.node("n2").partition_map.partitions_of("n2")
    assert held_before, "n2 held partitions before it left"

    assert cluster.leave("n2") == "leaving n2 (ordered at n1)"
    settle(cluster)

    assert_one_balanced_map(cluster, ("n1", "n3", "n4", "n5"))
    final = cluster.node("n1").partition_map
    member = final.member("n2")
    assert member is not None and member.state == REMOVED
    assert final.partitions_of("n2") == ()
    assert not cluster.node("n2").replicas
    # Its storage kept no record of any partition it gave away.
    assert cluster.storage("n2").partitions() == []
    read_back(cluster, written)
    # A removed node still serves its clients, by forwarding.
    found = cluster.request("n2", GetOp("key0"))
    assert isinstance(found, Found) and found.value == written["key0"]


def test_orders_go_to_the_lowest_active_member_that_is_up() -> None:
    cluster = SimCluster(SEED, founders_config(nodes=4, founders=3))
    cluster.run_for(100)
    cluster.crash("n1")
    assert cluster.leave("n3") == "leaving n3 (ordered at n2)"
    cluster.run_for(10)
    cluster.crash("n2")
    cluster.run_for(100)
    # The leaving node is the last member up: it takes the order that admits n4.
    assert cluster.join("n4") == "active n4 at 127.0.0.1:7004 (ordered at n3)"
    cluster.run_for(100)
    roster = cluster.node("n3").partition_map
    assert (roster.member("n3").state, roster.member("n4").state) == ("leaving", ACTIVE)  # type: ignore[union-attr]


def test_orders_with_every_node_down_are_described_not_raised() -> None:
    cluster = SimCluster(SEED, founders_config(nodes=3, founders=2))
    cluster.run_for(100)
    for node_id in cluster.node_ids():
        cluster.crash(node_id)
    assert cluster.join("n3") == "active n3 at 127.0.0.1:7003: no live node to give the order to"
    assert cluster.leave("n1") == "leaving n1: no live node to give the order to"
    with pytest.raises(ValueError, match="no node 'n9'"):
        cluster.join("n9")


def test_a_refused_order_is_in_the_trace() -> None:
    cluster = SimCluster(SEED, founders_config(nodes=3, founders=1))
    cluster.run_for(100)
    # n1 is the only active member: leaving would leave the data nowhere.
    assert cluster.leave("n1") == "leaving n1 (ordered at n1)"
    cluster.run_for(10)
    refused = [e for e in cluster.trace.last() if e[0] == "order-refused"]
    assert refused and refused[-1][2:4] == ("n1", "n1") and "last active member" in str(refused[-1][4])
    assert cluster.node("n1").partition_map.active == ("n1",)


def run_membership(seed: int) -> tuple[str, tuple[str, ...]]:
    cluster = SimCluster(seed, founders_config())
    cluster.run_for(100)
    write_keys(cluster, 12)
    cluster.join("n4")
    cluster.run_for(1500)
    cluster.join("n5")
    cluster.leave("n1")
    cluster.run_for(SETTLE_MS)
    view = cluster.view()
    assert view is not None
    return cluster.trace_hash(), view.active


def test_the_same_seed_gives_the_same_trace_with_joins_and_leaves() -> None:
    first, second = run_membership(5), run_membership(5)
    assert first == second
    assert first[1] == ("n2", "n3", "n4", "n5")
    assert run_membership(6)[0] != first[0]
