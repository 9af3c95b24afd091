"""kvstore.membership: membership orders (apply_order) and the rebalancer's view of one member."""

from __future__ import annotations

from collections import Counter

import pytest

from kvstore.config import ConfigError, NodeAddress
from kvstore.membership import Order, Rebalancer, apply_order
from kvstore.messages import SetMember
from partitioning.partition_map import ACTIVE, LEAVING, REMOVED, Member, PartitionMap

NODES = ("n1", "n2", "n3")
ADDRESSES = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")


def founded(partitions: int = 6) -> PartitionMap:
    return PartitionMap.round_robin(NODES, partitions, addresses=ADDRESSES)


# ---------------------------------------------------------------- apply_order: joins


def test_a_join_with_an_address_adds_the_node_at_version_two() -> None:
    m = founded()
    order = apply_order(m, SetMember("n4", ACTIVE, "10.0.0.4:7004"))
    assert order.refusal is None and order.new_map is not None
    assert order.new_map == m.with_member("n4", ACTIVE, "10.0.0.4:7004")
    assert order.new_map.member("n4") == Member("n4", "10.0.0.4:7004", ACTIVE, 2)
    assert order.new_map.epoch == m.epoch + 1 and order.new_map.replicas == m.replicas


def test_a_join_without_an_address_needs_one_the_roster_already_has() -> None:
    m = founded()
    assert apply_order(m, SetMember("n4", ACTIVE)) == Order(
        None, "n4 is not in the roster: a join needs its address ('host:port')"
    )
    # A node that left (and was removed) rejoins at the address the roster kept.
    gone = m.with_member("n4", ACTIVE, "10.0.0.4:7004").with_member("n4", LEAVING).with_member("n4", REMOVED)
    back = apply_order(gone, SetMember("n4", ACTIVE))
    assert back.refusal is None and back.new_map is not None
    assert back.new_map.member("n4") == Member("n4", "10.0.0.4:7004", ACTIVE, 5)
    # A founding member known with no address (a map built from replicas alone) cannot rejoin without one.
    bare = PartitionMap((("n1",), ("n2",))).with_member("n2", LEAVING)
    refused = apply_order(bare, SetMember("n2", ACTIVE))
    assert refused == Order(None, "n2 is not in the roster: a join needs its address ('host:port')")


@pytest.mark.parametrize("address", ["nowhere", "host:", ":7004", "host:0", "host:65536", "host:port", "host:-1"])
def test_a_join_at_a_bad_address_is_refused_with_what_is_wrong(address: str) -> None:
    assert apply_order(founded(), SetMember("n4", ACTIVE, address)) == Order(
        None, f"nodes.n4: expected 'host:port', got {address!r}"
    )


def test_a_join_of_a_node_already_active_at_that_address_changes_nothing() -> None:
    m = founded()
    assert apply_order(m, SetMember("n2", ACTIVE, ADDRESSES[1])) == Order(None, None)
    assert apply_order(m, SetMember("n2", ACTIVE)) == Order(None, None)
    joined = m.with_member("n4", ACTIVE, "10.0.0.4:7004")
    assert apply_order(joined, SetMember("n4", ACTIVE, "10.0.0.4:7004")) == Order(None, None)
    # At another address it is a change: the entry moves there, one version on.
    moved = apply_order(m, SetMember("n2", ACTIVE, "10.0.0.2:8000"))
    assert moved.new_map is not None and moved.new_map.member("n2") == Member("n2", "10.0.0.2:8000", ACTIVE, 2)


def test_a_join_of_a_leaving_node_takes_it_back() -> None:
    leaving = founded().with_member("n2", LEAVING)
    back = apply_order(leaving, SetMember("n2", ACTIVE))
    assert back.new_map is not None and back.new_map.member("n2") == Member("n2", ADDRESSES[1], ACTIVE, 3)
    assert back.new_map.active == NODES


@pytest.mark.parametrize("node_id", ["", "x" * 257, 7, None])
def test_an_order_for_a_bad_node_id_is_refused(node_id: object) -> None:
    order = apply_order(founded(), SetMember(node_id, ACTIVE, "10.0.0.4:7004"))  # type: ignore[arg-type]
    assert order == Order(None, "a node id is a str of 1 to 256 characters")


# ---------------------------------------------------------------- apply_order: leaves and bad states


def test_a_leave_marks_the_node_leaving_one_version_on() -> None:
    m = founded()
    order = apply_order(m, SetMember("n3", LEAVING))
    assert order.refusal is None and order.new_map is not None
    assert order.new_map.member("n3") == Member("n3", ADDRESSES[2], LEAVING, 2)
    assert (order.new_map.active, order.new_map.members, order.new_map.draining()) == (("n1", "n2"), NODES, ("n3",))
    # Asked again: nothing more to do.
    assert apply_order(order.new_map, SetMember("n3", LEAVING)) == Order(None, None)


def test_a_leave_of_an_unknown_or_removed_node_is_refused() -> None:
    m = founded()
    assert apply_order(m, SetMember("n9", LEAVING)) == Order(None, "n9 is not a member of the cluster")
    gone = m.with_member("n3", LEAVING).with_member("n3", REMOVED)
    assert apply_order(gone, SetMember("n3", LEAVING)) == Order(None, "n3 is not a member of the cluster")


def test_a_leave_of_the_last_active_member_is_refused() -> None:
    m = founded().with_member("n2", LEAVING).with_member("n3", LEAVING)
    assert apply_order(m, SetMember("n1", LEAVING)) == Order(
        None, "n1 is the last active member: the cluster would have nowhere to keep data"
    )
    single = PartitionMap.round_robin(("n1",), 4, addresses=("127.0.0.1:7001",))
    assert apply_order(single, SetMember("n1", LEAVING)).refusal == (
        "n1 is the last active member: the cluster would have nowhere to keep data"
    )
    # With a second active member, the first may go.
    grown = single.with_member("n2", ACTIVE, "127.0.0.1:7002")
    assert apply_order(grown, SetMember("n1", LEAVING)).new_map is not None


@pytest.mark.parametrize("state", [REMOVED, "gone", "", "ACTIVE", None])
def test_an_order_for_any_other_state_is_refused(state: object) -> None:
    order = apply_order(founded(), SetMember("n2", state, ADDRESSES[1]))  # type: ignore[arg-type]
    assert order == Order(None, f"state must be 'active' (join) or 'leaving' (leave), not {state!r}")


# ---------------------------------------------------------------- the rebalancer


def test_a_round_robin_map_is_balanced_and_moves_nothing() -> None:
    m = PartitionMap.round_robin(NODES, 64)
    for node in NODES:
        rebalancer = Rebalancer(node)
        assert rebalancer.balanced(m)
        assert rebalancer.moves(m) == []
        assert rebalancer.finished_leavers(m) is None
        assert rebalancer.target(m) == m.layout()


def test_after_a_join_each_member_moves_only_its_own_partitions_and_all_of_them_to_the_joiner() -> None:
    m = PartitionMap.round_robin(NODES, 64).with_member("n4", ACTIVE, "10.0.0.4:7004")
    assert not Rebalancer("n1").balanced(m)
    moves = {node: Rebalancer(node).moves(m) for node in (*NODES, "n4")}
    assert moves["n4"] == []
    for node in NODES:
        assert moves[node], f"{node} gives the joiner nothing"
        assert {target for _, target in moves[node]} == {"n4"}
        assert all(m.owner(p) == node for p, _ in moves[node]), f"{node} moves a partition it does not own"
    given = [p for node in NODES for p, _ in moves[node]]
    assert len(given) == len(set(given))
    assert 64 / 4 - 1.5 <= len(given) <= 64 / 4 + 1.5
    # The same map gives the same plan everywhere: after every move, the layout is balanced.
    done = m
    for p in given:
        done = done.with_replicas(p, ("n4",))
    load = Counter(r[0] for r in done.replicas)
    assert all(abs(load[node] - 16) <= 1.5 for node in (*NODES, "n4")), load
    assert all(Rebalancer(node).balanced(done) and Rebalancer(node).moves(done) == [] for node in (*NODES, "n4"))


def test_a_leaving_node_moves_all_its_partitions_and_none_to_a_leaving_node() -> None:
    m = PartitionMap.round_robin(("n1", "n2", "n3", "n4"), 64).with_member("n2", LEAVING).with_member("n4", LEAVING)
    moves = {node: Rebalancer(node).moves(m) for node in ("n1", "n2", "n3", "n4")}
    for leaver in ("n2", "n4"):
        assert sorted(p for p, _ in moves[leaver]) == list(m.partitions_of(leaver))
        assert {target for _, target in moves[leaver]} <= {"n1", "n3"}
    assert moves["n1"] == moves["n3"] == []
    done = m
    for p, target in moves["n2"] + moves["n4"]:
        done = done.with_replicas(p, (target,))
    assert Counter(r[0] for r in done.replicas) == {"n1": 32, "n3": 32}
    assert done.draining() == ()
    assert Rebalancer("n1").balanced(done)


def test_a_drained_leaver_is_marked_removed_only_by_itself_or_the_lowest_active_member() -> None:
    m = PartitionMap.round_robin(("n1", "n2", "n3", "n4"), 8).with_member("n1", LEAVING)
    # Still holding partitions: nobody marks it.
    assert all(Rebalancer(node).finished_leavers(m) is None for node in ("n1", "n2", "n3", "n4"))
    drained = m
    for p in m.partitions_of("n1"):
        drained = drained.with_replicas(p, ("n3",))
    expected = drained.with_member("n1", REMOVED)
    assert expected.member("n1") == Member("n1", "", REMOVED, 3)
    # n2 is the lowest active member (n1 is leaving); n3 and n4 leave it to them.
    assert Rebalancer("n1").finished_leavers(drained) == expected
    assert Rebalancer("n2").finished_leavers(drained) == expected
    assert Rebalancer("n3").finished_leavers(drained) is None
    assert Rebalancer("n4").finished_leavers(drained) is None
    # Both mark it at one version, so the two marks are the same entry and merge into one.
    assert Rebalancer("n1").finished_leavers(drained).merge(expected) == expected  # type: ignore[union-attr]
    # Once removed, there is nothing more to do.
    assert all(Rebalancer(node).finished_leavers(expected) is None for node in ("n1", "n2", "n3", "n4"))


def test_the_lowest_active_member_marks_every_drained_leaver_in_one_map() -> None:
    m = PartitionMap.round_robin(("n1", "n2", "n3", "n4"), 4)
    m = m.with_replicas(1, ("n1",)).with_replicas(3, ("n3",))  # n2 and n4 hold nothing
    m = m.with_member("n2", LEAVING).with_member("n4", LEAVING)
    marked = Rebalancer("n1").finished_leavers(m)
    assert marked is not None
    assert (marked.member("n2").state, marked.member("n4").state) == (REMOVED, REMOVED)  # type: ignore[union-attr]
    assert marked.members == ("n1", "n3")
    only_self = Rebalancer("n4").finished_leavers(m)
    assert only_self is not None
    assert (only_self.member("n2").state, only_self.member("n4").state) == (LEAVING, REMOVED)  # type: ignore[union-attr]
    assert Rebalancer("n3").finished_leavers(m) is None


def test_the_target_is_cached_per_map_epoch_and_follows_a_new_map() -> None:
    rebalancer = Rebalancer("n1")
    m = PartitionMap.round_robin(NODES, 12)
    assert rebalancer.target(m) == m.layout()
    joined = m.with_member("n4", ACTIVE, "10.0.0.4:7004")
    target = rebalancer.target(joined)
    # Within SLACK_PARTITIONS of the fair share of 3: the joiner gets 2, taken from the two most loaded.
    assert Counter(r[0] for r in target.values()) == {"n1": 3, "n2": 3, "n3": 4, "n4": 2}
    assert rebalancer.target(joined) is target


@pytest.mark.parametrize(
    "address", ["::1:80", "h/x:80", "x@y:80", "h?x:80", "h x:80", "host:\u0668\u0660", "host:0", "[nothost]:80", ":80"]
)
def test_an_address_that_is_not_a_host_and_a_port_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="expected 'host:port'"):
        NodeAddress.parse("n4", address)


@pytest.mark.parametrize(
    ("address", "url"), [("[::1]:7004", "http://[::1]:7004"), ("db-4.local:80", "http://db-4.local:80")]
)
def test_host_names_ipv4_and_bracketed_ipv6_addresses_are_taken(address: str, url: str) -> None:
    assert NodeAddress.parse("n4", address).url == url
