"""Node.step and membership: SetMember orders, announcements of the new map, the rebalancers that move
partitions to a joiner or off a leaver, and nodes of the config that are not members yet.

Uses the hand-cranked network of tests/protocol/test_node_moves.py (fsync = "batch", power-loss crashes,
timers fired when the network is idle). The cluster is five configured nodes of which three founded it:
n4 and n5 run from the start but hold nothing and are not in the roster until a join admits them.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.effects import Send
from kvstore.errors import ErrorCode
from kvstore.map_gossip import MAP_RESEND_MS
from kvstore.membership import Rebalancer
from kvstore.messages import (
    NODE_PARTITION,
    CasOp,
    ClientRequest,
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    MapUpdate,
    Message,
    MovePartition,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    SetMember,
    Started,
    Written,
)
from kvstore.node import Node
from kvstore.storage.memory import MemoryStorage
from partitioning.partition_map import ACTIVE, LEAVING, REMOVED, Member, PartitionMap
from tests.protocol.test_node_moves import Net, keys_in

FOUNDERS = ("n1", "n2", "n3")
ALL = ("n1", "n2", "n3", "n4", "n5")
PARTITIONS = 16


def cluster_config(partitions: int = PARTITIONS) -> ClusterConfig:
    return local_cluster(5, partitions=partitions, storage=StorageConfig(fsync="batch"), initial_nodes=FOUNDERS)


def cluster(partitions: int = PARTITIONS, **kwargs: object) -> Net:
    return Net(cfg=cluster_config(partitions), **kwargs)  # type: ignore[arg-type]


def address(net: Net, node_id: str) -> str:
    return net.cfg.address_text(node_id)


def order(net: Net, at: str, node_id: str, state: str, where: str = "") -> list[Send]:
    """A membership order at ``at``; the sends it caused (its refusal is ``net.nodes[at].order_refusal``)."""
    return [e for e in net.step(at, SetMember(node_id, state, where)) if isinstance(e, Send)]


def write(net: Net, count: int, via: tuple[str, ...] = ALL) -> dict[str, tuple[bytes, int]]:
    """``count`` keys written through the nodes of ``via`` in turn; key -> (value, version) acknowledged."""
    written: dict[str, tuple[bytes, int]] = {}
    for i in range(count):
        key, value = f"key{i:03}", b"value-%d" % i * (i % 3 + 1)
        answer = net.request(via[i % len(via)], PutOp(key, value))
        assert isinstance(answer, Written) and answer.key == key, answer
        written[key] = (value, answer.version)
    net.sync_all()
    return written


def read(net: Net, node_id: str, key: str, retries: int = 0) -> Result:
    """A client's GET at ``node_id``, sent again after a definite ``wrong_epoch`` (as kvstore.client does) at most
    ``retries`` times."""
    for _ in range(retries):
        answer = net.request(node_id, GetOp(key))
        if not (isinstance(answer, Failure) and answer.code == ErrorCode.WRONG_EPOCH.value):
            return answer
        net.run()  # the map update that came with the refusal
    return net.request(node_id, GetOp(key))


def assert_readable(net: Net, written: dict[str, tuple[bytes, int]], via: tuple[str, ...], retries: int = 0) -> None:
    for node_id in via:
        for key, (value, version) in written.items():
            assert read(net, node_id, key, retries) == Found(key, value, version), (node_id, key)


def assert_settled(net: Net, members: tuple[str, ...]) -> PartitionMap:
    """Every node of ``members`` has one map, balanced, no move running; each partition is served by exactly its
    owner among all nodes, and no node keeps records of a partition it does not hold."""
    maps = {node_id: net.nodes[node_id].partition_map for node_id in members}
    the_map = maps[members[0]]
    assert all(m == the_map for m in maps.values()), {n: m.epoch for n, m in maps.items()}
    for node_id in members:
        assert net.nodes[node_id].balanced, node_id
    served = Counter(p for node in net.nodes.values() for p in node.replicas)
    assert served == Counter(range(the_map.partition_count)), "each partition served by exactly one node"
    for p in range(the_map.partition_count):
        assert p in net.nodes[the_map.owner(p)].replicas
    for node_id, node in net.nodes.items():
        kept = {p for p in node.storage.partitions() if node.storage.copy_of(p)}
        assert kept <= set(node.replicas), (node_id, kept - set(node.replicas))
    active = the_map.active
    load = Counter(r[0] for r in the_map.replicas)
    share = the_map.partition_count / len(active)
    assert set(load) <= set(active)
    assert all(abs(load[n] - share) <= 1.5 for n in active), load
    return the_map


# ---------------------------------------------------------------- a join


def test_a_join_spreads_the_map_moves_partitions_to_the_joiner_and_keeps_every_key() -> None:
    net = cluster()
    written = write(net, 60)
    before = net.nodes["n1"].partition_map
    sends = order(net, "n2", "n4", ACTIVE, address(net, "n4"))
    n2 = net.nodes["n2"]
    assert n2.order_refusal is None
    joined = n2.partition_map
    assert joined == before.with_member("n4", ACTIVE, "127.0.0.1:7004")
    assert joined.member("n4") == Member("n4", "127.0.0.1:7004", ACTIVE, 2) and joined.epoch == 2
    # Announced at once to every node of the roster, the joiner included (not to n5: no member), durable.
    update = MapUpdate.of(joined)
    assert sends == [Send(Message("n2", dst, NODE_PARTITION, update), True) for dst in ("n1", "n3", "n4")]
    net.run()
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert final.active == ("n1", "n2", "n3", "n4") and final.member("n4") == joined.member("n4")
    taken = final.partitions_of("n4")
    assert len(taken) >= PARTITIONS / 4 - 1.5, taken
    # Every partition the joiner took came from its founding owner in one move (epoch 2), and nothing else moved.
    for p in range(PARTITIONS):
        assert final.epoch_of(p) == (2 if p in taken else 1), p
        assert final.owner(p) == ("n4" if p in taken else before.owner(p))
    assert final.epoch == joined.epoch + len(taken)
    # Not a member: n5 was announced nothing, and learnt the map from the members' anti-entropy rounds.
    assert net.nodes["n5"].partition_map == final
    assert_readable(net, written, ("n1", "n2", "n3", "n4", "n5"))
    # The joiner's versions go on from the moved applied index (a partition's versions grow across its keys).
    key = next(k for k in written if final.partition_for_key(k) in taken)
    applied = max(v for k, (_, v) in written.items() if final.partition_for_key(k) == final.partition_for_key(key))
    assert net.request("n5", PutOp(key, b"after")) == Written(key, applied + 1)


def test_with_the_rebalancer_off_a_join_admits_the_node_and_moves_nothing_until_a_move_is_ordered() -> None:
    net = Net(cfg=cluster_config().replace(rebalance=False))
    written = write(net, 30, via=FOUNDERS)
    before = net.nodes["n1"].partition_map
    order(net, "n2", "n4", ACTIVE, address(net, "n4"))
    net.run()
    joined = before.with_member("n4", ACTIVE, "127.0.0.1:7004")
    for node_id in ("n1", "n2", "n3", "n4"):
        assert net.nodes[node_id].partition_map == joined, node_id
        assert not net.nodes[node_id].balanced, node_id
    assert joined.partitions_of("n4") == () and not net.nodes["n4"].replicas
    assert_readable(net, written, ALL)


def test_a_second_join_moves_partitions_only_to_the_newest_member() -> None:
    net = cluster()
    written = write(net, 40, via=FOUNDERS)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    net.run()
    first = assert_settled(net, ("n1", "n2", "n3", "n4"))
    order(net, "n4", "n5", ACTIVE, address(net, "n5"))
    assert net.nodes["n4"].order_refusal is None
    net.run()
    final = assert_settled(net, ALL)
    assert final.active == ALL and len(final.partitions_of("n5")) >= PARTITIONS / 5 - 1.5
    for p in range(PARTITIONS):
        assert final.owner(p) in (first.owner(p), "n5"), "moves go only to the joiner"
    assert_readable(net, written, ALL)


# ---------------------------------------------------------------- a leave


def test_a_leave_drains_the_node_which_ends_removed_in_every_map_holding_nothing() -> None:
    net = cluster()
    written = write(net, 60)
    assert net.nodes["n2"].storage.key_count() > 0
    sends = order(net, "n3", "n2", LEAVING)
    assert net.nodes["n3"].order_refusal is None
    leaving = net.nodes["n3"].partition_map
    assert leaving.member("n2") == Member("n2", "127.0.0.1:7002", LEAVING, 2)
    assert [s.msg.dst for s in sends] == ["n1", "n2"]
    net.run()
    final = assert_settled(net, ("n1", "n2", "n3"))
    assert final.member("n2") == Member("n2", "127.0.0.1:7002", REMOVED, 3)
    assert (final.members, final.active, final.draining()) == (("n1", "n3"), ("n1", "n3"), ())
    n2 = net.nodes["n2"]
    assert final.partitions_of("n2") == () and n2.replicas == {}
    assert n2.storage.key_count() == 0
    # The rebalancers look no more: nothing to do anywhere.
    assert all(not any(key == "rebalance" for key in net.timers[n]) for n in ALL)
    # A removed node still takes client ops and forwards them.
    assert_readable(net, written, ("n1", "n2", "n3", "n4"), retries=1)
    # Asked again, the leave is refused; a re-join is taken (at the address the roster kept).
    order(net, "n1", "n2", LEAVING)
    assert net.nodes["n1"].order_refusal == "n2 is not a member of the cluster"
    order(net, "n1", "n2", ACTIVE)
    assert net.nodes["n1"].order_refusal is None
    net.run()
    rejoined = assert_settled(net, ("n1", "n2", "n3"))
    assert rejoined.member("n2") == Member("n2", "127.0.0.1:7002", ACTIVE, 4)
    assert len(rejoined.partitions_of("n2")) >= PARTITIONS / 3 - 1.5
    assert_readable(net, written, FOUNDERS)


def test_a_leave_and_a_join_ordered_at_two_nodes_at_once_both_happen() -> None:
    net = cluster()
    written = write(net, 50, via=FOUNDERS)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    order(net, "n3", "n1", LEAVING)  # before n3 heard of the join: both changes are of version 2
    assert net.nodes["n1"].order_refusal is None and net.nodes["n3"].order_refusal is None
    net.run()
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert final.member("n1") == Member("n1", "127.0.0.1:7001", REMOVED, 3)
    assert final.member("n4") == Member("n4", "127.0.0.1:7004", ACTIVE, 2)
    assert final.active == ("n2", "n3", "n4") and net.nodes["n1"].storage.key_count() == 0
    assert_readable(net, written, ("n2", "n3", "n4", "n1"))


def test_orders_that_change_nothing_or_are_refused_send_nothing() -> None:
    net = cluster()
    before = net.nodes["n1"].partition_map
    cases = [
        (SetMember("n2", ACTIVE, "127.0.0.1:7002"), None),
        (SetMember("n9", LEAVING), "n9 is not a member of the cluster"),
        (SetMember("n4", ACTIVE), "n4 is not in the roster: a join needs its address ('host:port')"),
        (SetMember("n4", ACTIVE, "no-port"), "nodes.n4: expected 'host:port', got 'no-port'"),
        (
            SetMember("n4", REMOVED, "127.0.0.1:7004"),
            "state must be 'active' (join) or 'leaving' (leave), not 'removed'",
        ),
    ]
    for set_member, refusal in cases:
        assert net.step("n1", set_member) == []
        assert net.nodes["n1"].order_refusal == refusal
    assert net.nodes["n1"].partition_map == before
    for leaver in ("n2", "n3"):
        assert [s.msg.dst for s in order(net, "n1", leaver, LEAVING)] == ["n2", "n3"]
        assert net.nodes["n1"].order_refusal is None
    assert net.nodes["n1"].partition_map.active == ("n1",)
    assert net.step("n1", SetMember("n1", LEAVING)) == []
    assert net.nodes["n1"].order_refusal == "n1 is the last active member: the cluster would have nowhere to keep data"
    # Asked again of a leaving node: nothing more to do, nothing sent.
    assert net.step("n1", SetMember("n2", LEAVING)) == [] and net.nodes["n1"].order_refusal is None


def test_an_order_given_to_a_node_not_started_is_refused() -> None:
    cfg = cluster_config()
    node = Node("n1", cfg, MemoryStorage(), random.Random(1))
    before = node.partition_map
    assert node.step(0, SetMember("n4", ACTIVE, "127.0.0.1:7004")) == []
    assert node.order_refusal == "the node has not started"
    assert node.step(0, MovePartition(0, "n2")) == []
    assert node.order_refusal == "the node has not started"
    assert node.partition_map == before
    node.step(1, Started())
    effects = node.step(2, SetMember("n4", ACTIVE, "127.0.0.1:7004"))
    assert node.order_refusal is None and node.partition_map.member("n4") is not None
    assert sorted(e.msg.dst for e in effects if isinstance(e, Send)) == ["n2", "n3", "n4"]


# ---------------------------------------------------------------- nodes of the config that are not members


def test_a_configured_node_that_is_no_member_forwards_client_ops_before_it_is_admitted() -> None:
    net = cluster()
    n5 = net.nodes["n5"]
    assert not n5.partition_map.knows("n5") and n5.replicas == {} and n5.balanced
    assert "rebalance" not in net.timers["n5"] and "rebalance" not in net.timers["n4"], "no member, no rebalancer"
    m = n5.partition_map
    key = keys_in(net, 0, 1)[0]  # partition 0 is n1's
    assert net.request("n5", PutOp(key, b"one")) == Written(key, 1)
    assert net.request("n5", GetOp(key)) == Found(key, b"one", 1)
    assert net.request("n5", CasOp(key, b"one", b"two")) == Written(key, 2)
    assert net.request("n4", GetOp(key)) == Found(key, b"two", 2)
    assert dict(net.nodes["n1"].storage.copy_of(0))[key].value == b"two"
    others = {p: keys_in(net, p, 1)[0] for p in (1, 2)}
    for p, other in others.items():
        assert net.request("n5", PutOp(other, b"p%d" % p)) == Written(other, 1)
        assert dict(net.nodes[m.owner(p)].storage.copy_of(p))[other].value == b"p%d" % p
    page = net.request("n5", ScanOp("", None, 100))
    assert isinstance(page, ScanPage) and not page.truncated
    assert {item.key: item.value for item in page.items} == {key: b"two", **{k: b"p%d" % p for p, k in others.items()}}
    assert net.request("n5", DeleteOp(key)) == Deleted(key, True)
    answer = net.request("n4", GetOp(key))
    assert isinstance(answer, Failure) and answer.code == ErrorCode.NOT_FOUND.value
    assert n5.replicas == {} and n5.storage.key_count() == 0 and n5.partition_map == m


def test_a_message_from_a_node_neither_in_the_roster_nor_in_the_config_is_ignored() -> None:
    net = cluster()
    joined = net.nodes["n1"].partition_map.with_member("n9", ACTIVE, "10.0.0.9:7009")
    assert net.step("n2", Message("n9", "n2", NODE_PARTITION, MapUpdate.of(joined))) == []
    assert not net.nodes["n2"].partition_map.knows("n9") and not net.nodes["n2"].is_peer("n9")
    # Once a member tells it of n9, n9 is a peer.
    net.step("n2", Message("n1", "n2", NODE_PARTITION, MapUpdate.of(joined)))
    assert net.nodes["n2"].is_peer("n9") and net.nodes["n2"].address_of("n9") == "10.0.0.9:7009"
    assert "n9" in net.nodes["n2"].known_nodes


# ---------------------------------------------------------------- crashes and a hostile network


def test_a_joiner_losing_power_in_the_middle_of_the_rebalancing_still_ends_balanced_with_no_key_lost() -> None:
    net = cluster()
    written = write(net, 60, via=FOUNDERS)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))

    def n4_holds() -> int:
        return len(net.nodes["n4"].replicas)

    # After its first install (synced with its StreamDone): its map says it is a member.
    net.run_until(lambda: n4_holds() >= 2 and bool(net.nodes["n4"]._mover.receiving))
    held = n4_holds()
    net.queue = [m for m in net.queue if m.dst != "n4"]  # lost with the crash
    net.crash("n4")
    assert n4_holds() >= held - 1, "what was installed and synced stays"
    assert net.nodes["n4"].partition_map.member("n4") is not None
    net.run_until(lambda: n4_holds() >= held + 1)
    net.queue = [m for m in net.queue if m.dst != "n4"]
    net.crash("n4")
    net.run()
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert len(final.partitions_of("n4")) >= PARTITIONS / 4 - 1.5
    assert_readable(net, written, ("n1", "n2", "n3", "n4"))


def test_a_leaver_losing_power_in_the_middle_of_its_drain_still_ends_removed_with_no_key_lost() -> None:
    net = cluster()
    written = write(net, 60, via=FOUNDERS)
    order(net, "n1", "n2", LEAVING)
    net.run_until(lambda: 0 < len(net.nodes["n2"].replicas) < 4 and bool(net.nodes["n2"]._mover.moving))
    net.queue = [m for m in net.queue if m.dst != "n2"]
    net.crash("n2")
    net.run()
    final = assert_settled(net, FOUNDERS)
    assert final.member("n2").state == REMOVED and net.nodes["n2"].storage.key_count() == 0  # type: ignore[union-attr]
    assert_readable(net, written, FOUNDERS)


@pytest.mark.parametrize("seed", range(4))
def test_a_join_and_a_leave_under_duplicated_and_reordered_messages_converge(seed: int) -> None:
    net = cluster(rng=random.Random(seed))
    written = write(net, 40, via=FOUNDERS)
    net.duplicate, net.reorder = 0.3, True
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    order(net, "n2", "n3", LEAVING)
    net.run(max_steps=200000)
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert final.active == ("n1", "n2", "n4") and final.member("n3").state == REMOVED  # type: ignore[union-attr]
    net.duplicate, net.reorder = 0.0, False
    assert_readable(net, written, ("n1", "n2", "n3", "n4"), retries=2)


@pytest.mark.parametrize("seed", range(4))
def test_a_join_under_dropped_duplicated_and_reordered_messages_converges(seed: int) -> None:
    net = cluster(rng=random.Random(seed))
    written = write(net, 40, via=FOUNDERS)
    # The order's announcements arrive (see the tests below for a joiner that misses its own).
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    for _ in range(3):
        net.deliver_one()
    net.drop, net.duplicate, net.reorder = 0.05, 0.2, True
    net.run(max_steps=200000)
    net.drop, net.duplicate, net.reorder = 0.0, 0.0, False
    # A node that missed an announcement learns the map when it forwards (each read is retried once).
    assert_readable(net, written, ("n1", "n2", "n3", "n4"), retries=3)
    net.run()
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert final.member("n4") == Member("n4", "127.0.0.1:7004", ACTIVE, 2)
    assert_readable(net, written, ("n1", "n2", "n3", "n4"))


# ---------------------------------------------------------------- a stale node is sent the map again


def test_a_stale_node_that_missed_the_announcements_is_sent_the_map_again_after_MAP_RESEND_MS() -> None:
    net = cluster()
    written = write(net, 40, via=FOUNDERS)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    _run_losing_map_updates_to(net, "n5")  # every anti-entropy round's map to n5 is lost
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    n5 = net.nodes["n5"]
    assert n5.partition_map.epoch == 1 < final.epoch
    key = next(k for k in written if final.owner(final.partition_for_key(k)) == "n4")
    old_owner = n5.partition_map.owner(final.partition_for_key(key))

    def read_losing_map_updates() -> list[Message]:
        """A GET at n5, run to its answer while every map update to n5 is lost: those updates."""
        lost: list[Message] = []
        request_id = net.next_request
        net.next_request += 1
        net.step("n5", ClientRequest(request_id, GetOp(key)))
        for _ in range(1000):
            lost += [m for m in net.queue if m.dst == "n5" and isinstance(m.body, MapUpdate)]
            net.queue = [m for m in net.queue if not (m.dst == "n5" and isinstance(m.body, MapUpdate))]
            if request_id in net.replies:
                break
            net.now += 1
            assert net.deliver_one() or net.fire_next_timer()
        answer = net.replies.pop(request_id)
        assert isinstance(answer, Failure) and answer.code == ErrorCode.WRONG_EPOCH.value, answer
        return lost

    # n5 forwards to the founding owner, which refuses and sends its map: that update is lost.
    lost = read_losing_map_updates()
    assert [(m.src, m.body) for m in lost] == [(old_owner, MapUpdate.of(final))]
    # Within MAP_RESEND_MS of that: refused again, and no second copy of the same map.
    net.now += MAP_RESEND_MS // 2
    assert read_losing_map_updates() == []
    assert n5.partition_map.epoch == 1
    # After it: sent again, and this time it arrives.
    net.now += MAP_RESEND_MS
    assert net.request("n5", GetOp(key)) == Failure.of(
        ErrorCode.WRONG_EPOCH,
        f"{old_owner} does not hold partition {final.partition_for_key(key)} "
        f"(epoch 2 puts it on n4); the op did not happen",
    )
    net.run()
    assert n5.partition_map == final
    value, version = written[key]
    assert net.request("n5", GetOp(key)) == Found(key, value, version)


# ---------------------------------------------------------------- lost announcements (and bugs these tests found)


def _run_losing_map_updates_to(net: Net, *dsts: str) -> None:
    for _ in range(20000):
        net.queue = [m for m in net.queue if not (m.dst in dsts and isinstance(m.body, MapUpdate))]
        net.now += 1
        if not net.deliver_one() and not net.fire_next_timer():
            return
    raise AssertionError("the network did not go quiet")


def test_a_node_whose_map_misses_a_move_but_names_the_same_epoch_is_sent_the_map_when_refused() -> None:
    net = Net(cfg=local_cluster(4, partitions=8, storage=StorageConfig(fsync="batch")))
    key = keys_in(net, 0, 1)[0]
    assert net.request("n3", PutOp(key, b"v")) == Written(key, 1)
    net.sync_all()
    # n1 moves partition 0 to n2 and n3 and n4 miss every map update of it; n4 moves partition 3 to n3 (its stream
    # carries n4's map, which lacks the first move) and n1 misses that one. n1 and n3 each know one change the
    # other does not: both maps are at epoch 2.
    net.step("n1", MovePartition(0, "n2"))
    _run_losing_map_updates_to(net, "n3", "n4")
    net.step("n4", MovePartition(3, "n3"))
    _run_losing_map_updates_to(net, "n1", "n3")
    n1, n3 = net.nodes["n1"].partition_map, net.nodes["n3"].partition_map
    assert (n1.owner(0), n3.owner(0), n1.epoch, n3.epoch) == ("n2", "n1", 2, 2)
    # n3 forwards the key's op to n1, which refuses it (wrong_epoch): n3's map is wrong about partition 0, and
    # a client retrying at n3 (or pinned to it) must be able to get through once the refusal's map arrives.
    for _ in range(3):
        answer = net.request("n3", GetOp(key))
        net.now += MAP_RESEND_MS
        net.run()
    assert answer == Found(key, b"v", 1)
    assert net.nodes["n3"].partition_map.owner(0) == "n2"


@pytest.mark.parametrize("lost", ["announcement", "power"])
def test_a_joiner_that_does_not_know_it_was_admitted_does_not_raise_and_the_join_completes(lost: str) -> None:
    net = cluster()
    written = write(net, 30, via=FOUNDERS)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    if lost == "announcement":
        net.queue = [m for m in net.queue if m.dst != "n4"]  # the order's map update to n4 is lost
    else:
        net.run_until(lambda: net.nodes["n4"].partition_map.knows("n4"))
        net.queue = [m for m in net.queue if m.dst != "n4"]
        net.crash("n4")  # the map it learnt was never synced: it restarts from the founding map
        assert not net.nodes["n4"].partition_map.knows("n4")
    net.run()  # (this raised out of Node.step at n4, fatal for a node process, before with_placeholder)
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert len(final.partitions_of("n4")) >= PARTITIONS / 4 - 1.5
    assert_readable(net, written, ("n1", "n2", "n3", "n4"))


def test_a_leave_announces_the_map_once_to_each_node() -> None:
    net = cluster()
    sends = order(net, "n1", "n2", LEAVING)
    assert [s.msg.dst for s in sends] == ["n2", "n3"]


@pytest.mark.parametrize("lost", ["announcement", "power"])
def test_a_join_completes_when_the_only_owner_that_must_move_missed_the_order(lost: str) -> None:
    # 8 partitions on n1, n2, n3: 3, 3, 2. With n4 the fair share is 2 (1 to 3 within the slack): the balanced
    # layout takes one partition of n1's and nothing else, so only n1 moves anything, and no other move will
    # announce a map to it.
    net = cluster(partitions=8)
    written = write(net, 20, via=("n2", "n3"))
    order(net, "n2", "n4", ACTIVE, address(net, "n4"))
    joined = net.nodes["n2"].partition_map
    assert {n: len(Rebalancer(n).moves(joined)) for n in ALL} == {"n1": 1, "n2": 0, "n3": 0, "n4": 0, "n5": 0}
    if lost == "announcement":
        net.queue = [m for m in net.queue if m.dst != "n1"]
    else:
        net.run_until(lambda: net.nodes["n1"].partition_map.knows("n4"))
        net.crash("n1")  # the map it learnt was not synced yet
    assert not net.nodes["n1"].partition_map.knows("n4")
    net.run()  # quiet: no message, no timer (n2, n3 and n4 have no move of their own)
    final = assert_settled(net, ("n1", "n2", "n3", "n4"))
    assert final.partitions_of("n4") != ()
    assert_readable(net, written, ("n1", "n2", "n3", "n4"))


def test_maps_converge_when_quiet_after_two_joins_ordered_at_two_members_at_once() -> None:
    net = cluster(partitions=8)
    order(net, "n1", "n5", ACTIVE, address(net, "n5"))  # announced to n2, n3, n5
    order(net, "n2", "n4", ACTIVE, address(net, "n4"))  # announced to n1, n3, n4: n5 does not hear of n4 yet
    net.run()
    # n5 takes partition 1 from n2 and announces it to the nodes it knows (n1, n2, n3); n2 learns its hand-over
    # from that announcement, so its own install changes nothing and it announces nothing: n4 is never told.
    final = net.nodes["n1"].partition_map
    assert (final.owner(0), final.owner(1)) == ("n4", "n5")
    assert {n: net.nodes[n].partition_map.epoch for n in ALL} == dict.fromkeys(ALL, final.epoch)
    assert_settled(net, ALL)


def test_a_member_that_missed_a_join_learns_the_joiners_real_entry_when_quiet() -> None:
    net = cluster(partitions=8)
    order(net, "n1", "n4", ACTIVE, address(net, "n4"))
    net.queue = [m for m in net.queue if m.dst not in ("n2", "n4")]  # only n3 hears of the join from n1
    net.run()
    final = net.nodes["n1"].partition_map
    assert final.member("n4") == Member("n4", "127.0.0.1:7004", ACTIVE, 2) and final.owner(0) == "n4"
    # n2 heard of n4 only from n4's announcement of its install, which names n4 by a placeholder.
    assert net.nodes["n2"].partition_map.member("n4") == final.member("n4")
    assert_settled(net, ("n1", "n2", "n3", "n4"))
